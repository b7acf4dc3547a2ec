"""Why flowforge's MAF overfits the digits: its affine layers' log-scale bound (and, with
``--init random``, whether its identity initialisation matters).

Every affine layer of flowforge bounds its log-scale, ``s = B tanh(s_hat / B)`` (``B = 3``
by default: one layer scales by at most e^3 = 20). This ablation trains flowforge's models
of the quality benchmark (``benchmarks/quality.py``: same data, batches, Adam at 1e-3,
epochs, seeds, dequantisation, checkpoints) on the 8x8 digits with several bounds, and
prints the test NLL (bits/dim on the digits, nats on a toy) at the end of the budget and at
the best validation epoch, the training NLL of the last epoch and how many seeds overfit:

    OMP_NUM_THREADS=1 python -m benchmarks.scale_bound [--models maf realnvp nsf] \\
        [--bounds 3 1 0.5] [--seeds 0 1 2] [--data digits checkerboard ...] [--init random]

``--init random`` re-draws the last layer of every conditioner (MADE or MLP) with PyTorch's
default initialisation instead of flowforge's zeros, so that every layer starts as a random
map rather than the identity (the peers' starting point). ``--models nsf`` (the spline
flow, which has no log-scale bound: ``--bounds`` does not apply and its rows show ``-``) is
for that initialisation ablation. ``--scale softplus`` (MAF only) replaces the bounded
``e^s`` of every MADE layer by nflows' scale, ``softplus(s) + 1e-3`` (bounded below, not
above: its rows show ``softplus`` for the bound), to see whether that parametrisation is
what puts nflows' MAF ahead on two moons.

The records (the quality benchmark's, with ``scale_bound``, ``init`` and ``scale``) go to
``benchmarks/scale_bound.json``; ``--report`` prints its table without training, with
flowforge's runs of the quality benchmark (``--defaults``: ``benchmarks/quality.json`` and
``benchmarks/quality_ten_seeds.json``) as the rows of the defaults, ``B = 3`` and the
identity start, wherever this ablation did not run them itself.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.nn.made import MADE
from flowforge.nn.mlp import MLP
from flowforge.transforms.autoregressive import AffineAutoregressive, Autoregressive

from . import flowforge_models, quality
from .peers import FAMILIES


def randomise_last_layers(flow: torch.nn.Module) -> None:
    """Re-draw the zero-initialised last layer of every MADE and MLP conditioner."""
    for module in flow.modules():
        if isinstance(module, MADE):
            module.output.reset_parameters()
        elif isinstance(module, MLP):
            module[-1].reset_parameters()


def softplus_scale(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """nflows' MAF layer: ``z = x c + t`` with ``c = softplus(s) + 1e-3``, ``sum log c``."""
    raw, shift = params.unbind(-1)
    scale = F.softplus(raw) + 1e-3
    return scale * x + shift, scale.log().sum(-1)


def softplus_unscale(z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`softplus_scale`: ``x = (z - t) / c``, ``-sum log c``."""
    raw, shift = params.unbind(-1)
    scale = F.softplus(raw) + 1e-3
    return (z - shift) / scale, -scale.log().sum(-1)


def use_softplus_scale(flow: torch.nn.Module) -> None:
    """Give every MAF layer of ``flow`` nflows' scale (both directions)."""
    layers = [m for m in flow.modules() if isinstance(m, AffineAutoregressive)]
    if not layers:
        raise ValueError("--scale softplus is for the MAF: the flow has no affine MADE layer")
    for layer in layers:
        layer.transform_part = softplus_scale
        layer.untransform_part = softplus_unscale
        # the one-pass inverse's per-feature step: the generic one, through untransform_part
        layer.untransform_feature = types.MethodType(Autoregressive.untransform_feature, layer)


def bound_label(r: dict) -> str:
    """The bound column: ``B``, ``softplus`` for nflows' scale, ``-`` for a spline."""
    if r.get("scale", "tanh") == "softplus":
        return "softplus"
    return "-" if r["scale_bound"] is None else f"{r['scale_bound']:g}"


def mean_se(values: list[float]) -> str:
    """``mean ± standard error`` over seeds (no error for one seed)."""
    mean, se = quality.seed_mean(values)
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


def report(records: list[dict]) -> str:
    """One row per data, model and bound: means over the seeds."""
    lines = [
        "| data | model | scale bound B | init | seeds | test NLL at the end | at the best epoch "
        "| best epoch | training NLL (nats) | overfits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = run_key(r)[:-1]  # data, model, bound, init, scale
        groups.setdefault(key, []).append(r)
    order = sorted(
        groups.items(), key=lambda g: (g[0][:2], -(g[0][2] or 0), g[0][4], g[0][3] != "identity")
    )
    for (data, model, _, init, _), rs in order:
        rs = [r for r in rs if quality.test_nll(r, False) is not None and r["best_epoch"]]
        if not rs:
            continue
        unit = " (bits/dim)" if "bits_per_dim" in rs[0] else ""
        lines.append(
            f"| {data}{unit} | {model} | {bound_label(rs[0])} | {init} "
            f"| {len(rs)} "
            f"| {mean_se([quality.test_nll(r, False) for r in rs])} "
            f"| {mean_se([quality.test_nll(r, True) for r in rs])} "
            f"| {statistics.fmean(r['best_epoch'] for r in rs):.0f}/{rs[0]['epochs']} "
            f"| {statistics.fmean(r['train_nll'] for r in rs):.2f} "
            f"| {sum(bool(r['overfits']) for r in rs)}/{len(rs)} |"
        )
    return "\n".join(lines)


def default_runs(paths: list[Path]) -> list[dict]:
    """flowforge's runs of the quality benchmark in ``paths``, as records of this ablation:
    the default bound (``B = 3``; none for the spline flow) and the identity start."""
    runs = {}
    for path in paths:
        for r in json.loads(path.read_text()) if path.exists() else []:
            if r["library"] == "flowforge":
                bound = None if r["model"] == "nsf" else 3.0
                r = dict(r, scale_bound=bound, init="identity")
                runs[run_key(r)] = r
    return list(runs.values())


def with_defaults(records: list[dict], defaults: list[dict]) -> list[dict]:
    """``records`` and those of ``defaults`` whose run is not among them."""
    keys = {run_key(r) for r in records}
    return records + [r for r in defaults if run_key(r) not in keys]


def run_key(r: dict) -> tuple:
    """What a record is a run of: a newer run of the same replaces it."""
    init, scale = r.get("init", "identity"), r.get("scale", "tanh")
    return r["data"], r["model"], r["scale_bound"], init, scale, r["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maf"], choices=["maf", "realnvp", "nsf"])
    parser.add_argument("--bounds", nargs="+", type=float, default=[3.0, 1.0, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", nargs="+", default=["digits"], choices=list(quality.BUDGET))
    parser.add_argument("--init", default="identity", choices=["identity", "random"])
    parser.add_argument("--scale", default="tanh", choices=["tanh", "softplus"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale_bound.json"))
    parser.add_argument("--report", action="store_true", help="print the table of --out")
    parser.add_argument(
        "--defaults",
        nargs="*",
        type=Path,
        default=[Path("benchmarks/quality.json"), Path("benchmarks/quality_ten_seeds.json")],
        help="quality-benchmark JSONs whose flowforge runs are the default rows of --report",
    )
    args = parser.parse_args()
    if args.report:
        print(report(with_defaults(json.loads(args.out.read_text()), default_runs(args.defaults))))
        return
    torch.set_num_threads(args.threads)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    for name, family in itertools.product(args.data, args.models):
        data = quality.load(name)
        epochs, batch_size = quality.BUDGET[name]
        no_bound = family == "nsf" or args.scale == "softplus"  # splines have no B
        for bound in [None] if no_bound else args.bounds:
            for seed in args.seeds:
                torch.manual_seed(seed)
                options = {} if bound is None else {"scale_bound": bound}
                subject = flowforge_models.build(FAMILIES[family], data.train.dim, **options)
                if args.init == "random":
                    randomise_last_layers(subject.module)
                if args.scale == "softplus":
                    use_softplus_scale(subject.module)
                r = {
                    "data": name,
                    "model": family,
                    "scale_bound": bound,
                    "init": args.init,
                    "scale": args.scale,
                    "seed": seed,
                    **quality.train_and_test(subject, data, epochs, batch_size, seed),
                }
                r.pop("curves")
                print(
                    f"{name} {family} B={bound} {args.scale} scale, {args.init} init, "
                    f"seed {seed}: test NLL "
                    f"{quality.number(quality.test_nll(r, False))} at the end, "
                    f"{quality.number(quality.test_nll(r, True))} at "
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
