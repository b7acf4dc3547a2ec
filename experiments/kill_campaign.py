"""Kill ``flowforge fit`` at random moments, resume it each time, and compare the end with an
uninterrupted run, byte for byte.

Each round starts ``flowforge fit ... --resume`` (a fresh start when nothing is saved yet),
waits until the process has written a checkpoint of its own, then sends SIGKILL (nothing can
be saved), SIGTERM or SIGINT (an orderly stop) after a random delay; the rounds go on until a
launch finishes by itself. A round's kill may land anywhere: in a step, inside a
checkpoint write, during validation or the final save. The run's ``model.safetensors`` must
then equal the uninterrupted run's, and no temporary file may be left behind.

    python experiments/kill_campaign.py --runs 5 --out experiments/kill_campaign

writes ``OUT/table.md`` and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import write_results

FIT = ["fit", "--data", "two-moons", "--n", "20000", "--epochs", "3", "--layers", "4"]
FIT += ["--hidden", "32,32", "--batch-size", "64", "--checkpoint-every", "20", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def launch(out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "flowforge", *FIT, "--out", str(out), *extra]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stamp(out: Path) -> int | None:
    path = out / "checkpoint.safetensors"
    return path.stat().st_mtime_ns if path.exists() else None


def campaign(root: Path, reference: bytes, rng: random.Random, index: int) -> dict:
    out = root / f"run{index}"
    codes: dict[str, int] = {}
    kills = {name: 0 for name in SIGNALS}
    while True:
        before = stamp(out)
        process = launch(out, "--resume")
        while stamp(out) == before and process.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.5))
        name = rng.choice(list(SIGNALS))
        if process.poll() is None:
            process.send_signal(SIGNALS[name])
        _, stderr = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        kills[name] += 1
        key = f"{name} -> {process.returncode}"
        codes[key] = codes.get(key, 0) + 1
        lines = stderr.decode().strip().splitlines()
        assert name == "SIGKILL" or len(lines) == 1, lines
    leftovers = [p.name for p in out.rglob("*") if ".tmp-" in p.name]
    same = (out / "model.safetensors").read_bytes() == reference
    return {
        "run": index,
        "kills": kills,
        "exit_codes": codes,
        "identical": same,
        "leftover_temporaries": leftovers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/kill_campaign")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        straight = launch(root / "straight")
        assert straight.wait() == 0, straight.stderr.read().decode()
        reference = (root / "straight" / "model.safetensors").read_bytes()
        results = [campaign(root, reference, rng, i) for i in range(args.runs)]
    total = {name: sum(r["kills"][name] for r in results) for name in SIGNALS}
    codes: dict[str, int] = {}
    for r in results:
        for key, count in r["exit_codes"].items():
            codes[key] = codes.get(key, 0) + count
    lines = [
        "| runs | SIGKILL | SIGTERM | SIGINT | exit statuses | byte-identical | temporaries left |",
        "|---|---|---|---|---|---|---|",
        f"| {len(results)} | {total['SIGKILL']} | {total['SIGTERM']} | {total['SIGINT']} | "
        + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
        + f" | {sum(r['identical'] for r in results)} of {len(results)} | "
        + f"{sum(len(r['leftover_temporaries']) for r in results)} |",
    ]
    write_results(args.out, "\n".join(lines), results)


if __name__ == "__main__":
    main()
