"""Rezende & Mohamed (2015), section 6.1: flows fitted by reverse KL to U1..U4.

    python experiments/vi_table.py --out runs/vi --jobs 2

Fits planar and radial flows with K = 2, 8 and 32 layers, a Real NVP (8 affine couplings of
64x64), an IAF (8 MADE layers of 64x64) and a coupling NSF (8 spline couplings of 64x64, 8
bins, tails at +-5) to each of the four energies with `flowforge vi`'s machinery, diagnoses each run
with 100,000 samples (KL(q||p) exact up to Monte Carlo error, since log Z is known by
quadrature), and writes ``OUT/table.md``, ``OUT/results.json`` and the paper's figure grid
``OUT/grid.png`` (true density; planar K = 2, 8, 32; radial K = 2, 8, 32). ``--anneal`` adds
runs with and without annealing for the models named there, on U3 and U4.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tables import write_results

from flowforge import plots, runs
from flowforge.flows import io
from flowforge.inference import targets

TARGETS = ("u1", "u2", "u3", "u4")
# Every run: batch 500, Adam with a cosine schedule, a learnable diagonal-Gaussian base.
# Planar and radial flows: 5,000 steps at 5e-3; Real NVP: 20,000 steps at 1e-3 (each the
# better of the two rates in a trial on U1 / U3); IAF and NSF as Real NVP.
PLANAR = {"steps": 5000, "lr": 5e-3}
MODELS = {
    "planar-2": {"model": "planar", "layers": 2, **PLANAR},
    "planar-8": {"model": "planar", "layers": 8, **PLANAR},
    "planar-32": {"model": "planar", "layers": 32, **PLANAR},
    "radial-2": {"model": "radial", "layers": 2, **PLANAR},
    "radial-8": {"model": "radial", "layers": 8, **PLANAR},
    "radial-32": {"model": "radial", "layers": 32, **PLANAR},
    "realnvp-8": {"model": "realnvp", "layers": 8, "hidden": [64, 64], "steps": 20_000, "lr": 1e-3},
    "iaf-8": {"model": "iaf", "layers": 8, "hidden": [64, 64], "steps": 20_000, "lr": 1e-3},
    "nsf-8": {"model": "nsf", "layers": 8, "hidden": [64, 64], "steps": 20_000, "lr": 1e-3},
}
LONGER = {"realnvp-8-40k": {**MODELS["realnvp-8"], "steps": 40_000}}  # run with --models


def one_run(target: str, label: str, options: dict, out: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    config = runs.make_vi_config(None, {"target": target, "progress": False, **options})
    run_dir = Path(out) / f"{target}-{label}"
    runs.vi_run(config, run_dir)
    report = runs.diagnose_run(run_dir)
    result = {"target": target, "label": label, **report.as_dict()}
    result["minutes"] = round((time.perf_counter() - started) / 60, 2)
    print(f"{target} {label}: KL {report.kl:.4f} +- {report.kl_se:.4f}", flush=True)
    return result


def table(results: list[dict], labels: list[str]) -> str:
    by = {(r["target"], r["label"]): r for r in results}
    rows = ["| model | " + " | ".join(t.upper() for t in TARGETS) + " |"]
    rows.append("|---" * (len(TARGETS) + 1) + "|")
    for label in labels:
        cells = []
        for target in TARGETS:
            r = by.get((target, label))
            cells.append("" if r is None else f"{r['kl']:.3f} ± {r['kl_se']:.3f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def grid(out: Path) -> Path:
    rows = []
    for name in TARGETS:
        target = targets.get(name)
        flows = []
        for label in ("planar-2", "planar-8", "planar-32", "radial-2", "radial-8", "radial-32"):
            run_dir = out / f"{name}-{label}"
            if run_dir.exists():
                flows.append((label.replace("-", " K = "), io.load(run_dir)))
        rows.append((name.upper(), target.log_prob, flows))
    return plots.plot_vi_grid(rows, out / "grid.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/vi")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--anneal", nargs="*", default=[], help="models for the annealing study")
    args = parser.parse_args()
    common = {"batch_size": args.batch_size}
    choices = {**MODELS, **LONGER}
    jobs = [(t, m, {**choices[m], **common}) for t in TARGETS for m in args.models]
    for m in args.anneal:  # beta rises from 0.01 to 1 over the first half of the steps
        for t in ("u3", "u4"):
            options = {**MODELS[m], **common}
            jobs.append((t, f"{m}+anneal", {**options, "anneal": options["steps"] // 2}))
    threads = max(1, torch.get_num_threads() // args.jobs)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one_run, t, label, o, args.out, threads) for t, label, o in jobs]
        results = [f.result() for f in futures]
    labels = list(dict.fromkeys(r["label"] for r in results))
    write_results(args.out, table(results, labels), results)
    print(grid(Path(args.out)))


if __name__ == "__main__":
    main()
