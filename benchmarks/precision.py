"""Training in float32 and in bf16 (``ff.fit(precision=...)``): the time of a training step and
the test NLL reached after the same epochs, the two precisions interleaved in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.precision [--repeats 2] [--threads 1] \\
        [--out benchmarks/precision.json]
    python -m benchmarks.precision --table

A step's time is an epoch's training seconds over its steps, the median over the epochs after
the first (which holds the warm-up); on a CPU bf16 is as fast as the CPU's bf16 matrix
products (AVX512-BF16 or AMX where it has them, emulated otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

import flowforge as ff
from benchmarks.__main__ import cpu_model

OUT = Path(__file__).with_name("precision.json")
CASES = {  # name -> (data, builder keywords, epochs, batch size)
    "two-moons realnvp 8x(256,256)": ("two-moons", {"dim": 2}, 10, 256),
    "digits realnvp 8x(256,256)": ("digits", {"dim": 64}, 30, 128),
}


def run(case: str, precision: str, seed: int) -> dict:
    data_name, model, epochs, batch_size = CASES[case]
    data = ff.datasets.load(data_name, n=16_000 if data_name == "two-moons" else None)
    if data_name == "digits":
        data = data.flatten()
    torch.manual_seed(seed)
    flow = ff.models.realnvp(**model, layers=8, hidden=(256, 256), actnorm=data_name == "digits")
    history = ff.fit(
        flow,
        data.train,
        data.val,
        epochs=epochs,
        batch_size=batch_size,
        precision=precision,
        compile=False,
        progress=False,
        seed=seed,
    )
    steps = math.ceil(len(data.train) / batch_size)
    step_ms = statistics.median(1e3 * e["seconds"] / steps for e in history.epochs[1:])
    return {
        "case": case,
        "precision": precision,
        "seed": seed,
        "step_ms": step_ms,
        "test_nll": ff.evaluate(flow, data.test).nll,
    }


def table(results: dict) -> str:
    lines = [
        "| case | float32 step (ms) | bf16 step (ms) | bf16 / float32 time | float32 test NLL "
        "| bf16 test NLL |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        rows = [r for r in results["rows"] if r["case"] == case]
        if not rows:
            continue

        def median(precision: str, key: str, rows=rows) -> float:
            return statistics.median(r[key] for r in rows if r["precision"] == precision)

        f32, b16 = median("float32", "step_ms"), median("bf16", "step_ms")
        lines.append(
            f"| {case} | {f32:.2f} | {b16:.2f} | {b16 / f32:.2f}x "
            f"| {median('float32', 'test_nll'):.3f} | {median('bf16', 'test_nll'):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    rows = []
    for seed in range(args.repeats):
        for case in CASES:
            order = ("float32", "bf16") if seed % 2 == 0 else ("bf16", "float32")
            for precision in order:
                rows.append(run(case, precision, seed))
                print(json.dumps(rows[-1]), flush=True)
    results = {
        "machine": f"{cpu_model()}, {args.threads} thread(s)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python -m benchmarks.precision "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
