"""Fit several models to several datasets with `flowforge fit`'s defaults and tabulate test NLL.

    python experiments/density_table.py --data two-moons 8gaussians --models realnvp nice \
        --out runs/table --jobs 2

Each (dataset, model) pair is a run directory ``OUT/DATA-MODEL`` made by
:func:`flowforge.runs.fit_run`; the table (markdown) and every evaluation (JSON) are printed
and written to ``OUT/table.md`` and ``OUT/results.json``. Options after ``--`` are passed to
every run as config overrides, e.g. ``-- epochs=50 lr=0.002``.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml
from tables import write_results

from flowforge import runs


def one_run(data: str, model: str, out: str, overrides: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    config = runs.make_config(None, {"data": data, "model": model, "progress": False, **overrides})
    run_dir = Path(out) / f"{data}-{model}"
    _, history = runs.fit_run(config, run_dir)
    result = runs.evaluate_run(run_dir)
    result["epochs"] = len(history)
    result["minutes"] = round((time.perf_counter() - started) / 60, 2)
    print(runs.format_evaluation(result), flush=True)
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per model and one per dataset for its Gaussian baseline."""
    discrete = results[0]["flow"]["bits_per_dim"] is not None
    unit = "bits/dim" if discrete else "NLL (nats)"
    rows = [
        f"| data | model | test {unit} | s.e. | NLL - H(p) | KL(p\\|\\|q) paired +- s.e. "
        "| epochs | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in results:
        for name, key in ((r["model"], "flow"), ("Gaussian", "gaussian")):
            if name == "Gaussian" and r["data"] in seen:
                continue
            report = r[key]
            value = report["bits_per_dim"] if discrete else report["nll"]
            se = report["nll_se"] / (report["dim"] * math.log(2) if discrete else 1)
            gap = r["kl"] if key == "flow" else r["gaussian_kl"]
            gap_text = "" if gap is None else f"{gap:.3f}"
            paired = r.get(f"{key}_kl_paired")
            paired_text = "" if paired is None else f"{paired['kl']:.3f} +- {paired['se']:.3f}"
            epochs, minutes = ("", "") if key == "gaussian" else (r["epochs"], r["minutes"])
            rows.append(
                f"| {r['data']} | {name} | {value:.3f} | {se:.3f} | {gap_text} | {paired_text} "
                f"| {epochs} | {minutes} |"
            )
        seen.add(r["data"])
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["realnvp", "nice"])
    parser.add_argument("--out", default="runs/table")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (YAML values)")
    args = parser.parse_args()
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    pairs = [(d, m) for d in args.data for m in args.models]
    threads = max(1, torch.get_num_threads() // args.jobs)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one_run, d, m, args.out, overrides, threads) for d, m in pairs]
        results = [f.result() for f in futures]
    write_results(args.out, table(results), results)


if __name__ == "__main__":
    main()
