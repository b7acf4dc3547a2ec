"""Why flowforge's MAF overfits the digits: its affine layers' log-scale bound (and, with
``--init random``, whether its identity initialisation matters).

Every affine layer of flowforge bounds its log-scale, ``s = B tanh(s_hat / B)`` (``B = 3``
by default: one layer scales by at most e^3 = 20). This ablation trains flowforge's models
of the quality benchmark (``benchmarks/quality.py``: same data, batches, Adam at 1e-3,
epochs, seeds, dequantisation, checkpoints) on the 8x8 digits with several bounds, and
prints the test NLL (bits/dim on the digits, nats on a toy) at the end of the budget and at
the best validation epoch, the training NLL of the last epoch and how many seeds overfit:

    OMP_NUM_THREADS=1 python -m benchmarks.scale_bound [--models maf realnvp] \\
        [--bounds 3 1 0.5] [--seeds 0 1 2] [--data digits checkerboard ...]

``--init random`` re-draws the last layer of every conditioner (MADE or MLP) with PyTorch's
default initialisation instead of flowforge's zeros, so that every layer starts as a random
affine map rather than the identity (the peers' starting point).

The records (the quality benchmark's, with ``scale_bound`` and ``init``) go to
``benchmarks/scale_bound.json``; ``--report`` prints its table without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from flowforge.made import MADE
from flowforge.nn import MLP

from . import flowforge_models, quality
from .peers import FAMILIES


def randomise_last_layers(flow: torch.nn.Module) -> None:
    """Re-draw the zero-initialised last layer of every MADE and MLP conditioner."""
    for module in flow.modules():
        if isinstance(module, MADE):
            module.output.reset_parameters()
        elif isinstance(module, MLP):
            module[-1].reset_parameters()


def mean_se(values: list[float]) -> str:
    """``mean ± standard error`` over seeds (no error for one seed)."""
    mean, se = quality.seed_mean(values)
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


def test_nll(r: dict, at_best: bool) -> float | None:
    """The record's test NLL, in bits/dim for discrete data, else in nats."""
    if "bits_per_dim" in r:
        return r["bits_per_dim_at_best"] if at_best else r["bits_per_dim"]
    return r["nll_at_best"] if at_best else r["nll"]


def report(records: list[dict]) -> str:
    """One row per data, model and bound: means over the seeds."""
    lines = [
        "| data | model | scale bound B | init | seeds | test NLL at the end | at the best epoch "
        "| best epoch | training NLL (nats) | overfits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["data"], r["model"], r["scale_bound"], r.get("init", "identity"))
        groups.setdefault(key, []).append(r)
    order = sorted(groups.items(), key=lambda g: (g[0][:2], -g[0][2], g[0][3] != "identity"))
    for (data, model, bound, init), rs in order:
        rs = [r for r in rs if test_nll(r, False) is not None and r["best_epoch"]]
        if not rs:
            continue
        unit = " (bits/dim)" if "bits_per_dim" in rs[0] else ""
        lines.append(
            f"| {data}{unit} | {model} | {bound:g} | {init} | {len(rs)} "
            f"| {mean_se([test_nll(r, False) for r in rs])} "
            f"| {mean_se([test_nll(r, True) for r in rs])} "
            f"| {statistics.fmean(r['best_epoch'] for r in rs):.0f}/{rs[0]['epochs']} "
            f"| {statistics.fmean(r['train_nll'] for r in rs):.2f} "
            f"| {sum(bool(r['overfits']) for r in rs)}/{len(rs)} |"
        )
    return "\n".join(lines)


def run_key(r: dict) -> tuple:
    """What a record is a run of: a newer run of the same replaces it."""
    return r["data"], r["model"], r["scale_bound"], r.get("init", "identity"), r["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maf"], choices=["maf", "realnvp"])
    parser.add_argument("--bounds", nargs="+", type=float, default=[3.0, 1.0, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", nargs="+", default=["digits"], choices=list(quality.BUDGET))
    parser.add_argument("--init", default="identity", choices=["identity", "random"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale_bound.json"))
    parser.add_argument("--report", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    for name, family in itertools.product(args.data, args.models):
        data = quality.load(name)
        epochs, batch_size = quality.BUDGET[name]
        for bound in args.bounds:
            for seed in args.seeds:
                torch.manual_seed(seed)
                subject = flowforge_models.build(
                    FAMILIES[family], data.train.dim, scale_bound=bound
                )
                if args.init == "random":
                    randomise_last_layers(subject.module)
                r = {
                    "data": name,
                    "model": family,
                    "scale_bound": bound,
                    "init": args.init,
                    "seed": seed,
                    **quality.train_and_test(subject, data, epochs, batch_size, seed),
                }
                r.pop("curves")
                print(
                    f"{name} {family} B={bound:g} {args.init} init, seed {seed}: test NLL "
                    f"{quality.number(test_nll(r, False))} at the end, "
                    f"{quality.number(test_nll(r, True))} at "
                    f"epoch {r['best_epoch']}"
                    + (f", diverged: {r['diverged']}" * bool(r["diverged"])),
                    flush=True,
                )
                records = [old for old in records if run_key(old) != run_key(r)]
                records.append(r)
                args.out.write_text(json.dumps(records, indent=1))
    print("\n" + report(records))


if __name__ == "__main__":
    main()
