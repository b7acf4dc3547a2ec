"""NICE on MNIST: short pilots of training recipes, each a whole run of ``--epochs`` epochs
(its schedule planned over them), compared at equal epochs (issue 37).

    OMP_NUM_THREADS=1 python experiments/nice_pilots.py --recipe data-init --epochs 30 \\
        --checkpoint /tmp/nice/data-init [--data-dir ../shared/data/mnist] \\
        [--out experiments/nice_pilots.json]

A pilot checkpoints every 100 steps into ``--checkpoint`` and resumes from it when run again
(kill it at any time). After the last epoch the best epoch's weights (by validation) are
scored on the test set. The row of ``--recipe`` in ``--out`` (other rows are kept) holds the
curve (validation log-likelihood in nats on [0, 1]^784, the paper's scale, with the training
seconds) and the test log-likelihood with its standard error.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import flowforge as ff

ROOT = Path(__file__).resolve().parents[1]


def adam(betas: tuple[float, float], eps: float, lr: float = 1e-3):
    """A factory of Adam over the parameters."""
    return lambda parameters: torch.optim.Adam(parameters, lr=lr, betas=betas, eps=eps)


def warmup_cosine(steps: int, warmup: int = 500, floor: float = 0.1):
    """A factory of a linear warm-up over ``warmup`` steps, then a cosine decay to ``floor``
    times the rate at the end of ``steps``."""

    def build(optimizer):
        base = optimizer.param_groups[0]["lr"]
        rise = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=warmup)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=steps - warmup, eta_min=floor * base
        )
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [rise, decay], [warmup])

    return build


def scale_apart(flow: ff.Flow, scale_lr: float, lr: float = 1e-3):
    """A factory of Adam with the final diagonal scaling's ``log_scale`` at its own rate."""
    scale = [p for name, p in flow.named_parameters() if name.endswith("log_scale")]

    def build(parameters):
        rest = [p for p in parameters if all(p is not s for s in scale)]
        return torch.optim.Adam([{"params": rest}, {"params": scale, "lr": scale_lr}], lr=lr)

    return build


class FixedRates(ff.training.Callback):
    """Set the optimizer's parameter groups to ``rates`` when training starts (also when it
    resumes): a run resumed from another recipe's checkpoint at lower rates."""

    def __init__(self, *rates: float) -> None:
        self.rates = rates

    def on_fit_start(self, run) -> None:
        for group, rate in zip(run.optimizer.param_groups, self.rates, strict=True):
            group["lr"] = rate


# recipe -> (the model's keywords, fit's keywords given the planned steps and the flow); the
# paper's model:
# 4 additive couplings of 5 x 1000 ReLU networks, diagonal exp(s) scaling, logistic base
# (models.nice's defaults). fit's defaults: Adam 1e-3, batch 256, cosine to 0 over the epochs.
RECIPES = {
    "zeros": ({}, lambda steps, flow: {}),
    "data-init": ({"scale_init": "data"}, lambda steps, flow: {}),
    "data-init-paper-adam": (
        {"scale_init": "data"},
        lambda steps, flow: {"optimizer": adam((0.9, 0.99), 1e-4)},
    ),
    "data-init-ema": ({"scale_init": "data"}, lambda steps, flow: {"ema": 0.999}),
    # the command line's MNIST default: a constant rate (the 1936.9 run of the results)
    "zeros-constant": ({}, lambda steps, flow: {"schedule": None}),
    "data-init-constant": ({"scale_init": "data"}, lambda steps, flow: {"schedule": None}),
    "data-init-lr-2e-3": ({"scale_init": "data"}, lambda steps, flow: {"lr": 2e-3}),
    "data-init-warmup-floor": (
        {"scale_init": "data"},
        lambda steps, flow: {
            "optimizer": adam((0.9, 0.999), 1e-8, lr=2e-3),
            "scheduler": warmup_cosine(steps),
        },
    ),
    "data-init-batch-128": ({"scale_init": "data"}, lambda steps, flow: {"batch_size": 128}),
    # the scaling from zero, climbing at its own rate (ten times the couplings')
    "zeros-scale-lr-constant": (
        {},
        lambda steps, flow: {"optimizer": scale_apart(flow, 1e-2), "schedule": None},
    ),
    # resumed from the previous recipe's plateau (a copy of its checkpoint) at a tenth of
    # its rates, the floor of the authors' released schedule
    "zeros-scale-lr-tenth": (
        {},
        lambda steps, flow: {
            "optimizer": scale_apart(flow, 1e-2),
            "schedule": None,
            "callbacks": [FixedRates(1e-4, 1e-3)],
        },
    ),
}


DESCRIPTIONS = {
    "zeros": "the scaling from zero; Adam 1e-3 (0.9, 0.999, 1e-8), cosine to 0",
    "data-init": "the scaling from the data; Adam 1e-3 (0.9, 0.999, 1e-8), cosine to 0",
    "data-init-paper-adam": "the scaling from the data; Adam 1e-3 (0.9, 0.99, 1e-4), cosine to 0",
    "data-init-ema": "the scaling from the data; fit's defaults and ema=0.999",
    "data-init-lr-2e-3": "the scaling from the data; Adam 2e-3, cosine to 0",
    "data-init-warmup-floor": "the scaling from the data; Adam 2e-3, 500 steps of warm-up, "
    "cosine to 2e-4",
    "data-init-batch-128": "the scaling from the data; batch 128",
    "zeros-constant": "the scaling from zero; Adam 1e-3, constant (the command line's MNIST)",
    "data-init-constant": "the scaling from the data; Adam 1e-3, constant",
    "zeros-scale-lr-constant": "the scaling from zero at its own rate 1e-2; Adam 1e-3, constant",
    "zeros-scale-lr-tenth": "the same from its epoch 38, at a tenth of the rates (1e-3, 1e-4)",
}


def row_of(recipe: str, history: ff.History, model_options: dict, fit_options: dict) -> dict:
    """The JSON row of a pilot: its recipe and its curve (validation LL and seconds by epoch)."""
    seconds, curve = 0.0, []
    for epoch in history.epochs:
        seconds += epoch["seconds"]
        val = epoch["val_nll"]  # None where it was not finite
        ll = None if val is None else -val
        curve.append({"epoch": epoch["epoch"], "seconds": round(seconds, 1), "val_ll": ll})
    return {
        "recipe": recipe,
        "model": {k: str(v) for k, v in model_options.items()},
        "fit": {k: v if isinstance(v, int | float) else "RECIPES" for k, v in fit_options.items()},
        "epochs": len(history.epochs),
        "stopped": history.stopped,
        "best_epoch": history.best_epoch,
        "curve": curve,
    }


def table(results: dict) -> str:
    """The pilots as a markdown table: the validation LL at epochs 10, 20 and the last, the
    test LL of the best epoch with its standard error, and the training time."""
    lines = [
        "| recipe | epochs | val LL at 10 / 20 | val LL at the end | test LL (nats) | "
        "bits/dim | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        at = {point["epoch"]: point["val_ll"] for point in row["curve"]}
        last = row["curve"][-1]
        if "test_ll" in row:
            test = f"{row['test_ll']:.1f} ± {row['test_ll_se']:.1f}"
        else:  # still running, or stopped before its last epoch (not tested)
            test = "running" if row["stopped"].startswith("running") else "stopped, not tested"
        bpd = "" if "test_bpd" not in row else f"{row['test_bpd']:.3f}"
        early = " / ".join(f"{at[e]:.1f}" if at.get(e) is not None else "-" for e in (10, 20))
        lines.append(
            f"| {DESCRIPTIONS.get(row['recipe'], row['recipe'])} | {last['epoch']} | {early} "
            f"| {last['val_ll']:.1f} | {test} | {bpd} | {last['seconds'] / 60:.0f} min |"
        )
    return "\n".join(lines)


PAPER_LL = 1980.50  # the NICE paper's test log-likelihood on MNIST, after 1,500 epochs


def figure(results: dict, path: Path) -> None:
    """The pilots' validation log-likelihood against epochs and against training minutes,
    beside the paper's test figure, as a PNG at ``path`` (the axis from 1,000 nats up: the
    scaling from zero starts near -940)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for row in results["rows"]:
        points = [p for p in row["curve"] if p["val_ll"] is not None]
        label = DESCRIPTIONS.get(row["recipe"], row["recipe"])
        line = axes[0].plot([p["epoch"] for p in points], [p["val_ll"] for p in points], lw=1.5)
        axes[1].plot([p["seconds"] / 60 for p in points], [p["val_ll"] for p in points],
                     lw=1.5, color=line[0].get_color(), label=label)  # fmt: skip
    for axis, xlabel in zip(axes, ("epoch", "training minutes (one CPU thread)"), strict=True):
        axis.axhline(PAPER_LL, color="k", ls="--", lw=1)
        axis.set_xlabel(xlabel)
        axis.set_ylim(1000, 2050)
        axis.grid(alpha=0.3)
    axes[0].text(1, PAPER_LL + 12, "paper, 1,500 epochs (test)", fontsize=8)
    axes[0].set_ylabel("validation log-likelihood (nats)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("NICE on MNIST: pilots of training recipes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/nice_pilots.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--figure", type=Path, help="draw the pilots' curves of --out to a PNG")
    parser.add_argument(
        "--samples", type=Path, help="draw 64 samples of the finished pilot's model to a PNG"
    )
    parser.add_argument(
        "--snapshot", action="store_true", help="record the curve so far of a running pilot"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    if args.figure:
        figure(json.loads(args.out.read_text()), args.figure)
        return
    if args.recipe is None or args.checkpoint is None:
        parser.error("--recipe and --checkpoint are required to run a pilot")
    if args.snapshot:  # the curve so far of a pilot that is still running, without its test
        metadata, _ = ff.training.checkpoint.read(args.checkpoint)
        history = ff.History(**metadata["history"])
        history.stopped = f"running: {len(history.epochs)} of {args.epochs} epochs so far"
        _write(args, row_of(args.recipe, history, RECIPES[args.recipe][0], {}), argv)
        return
    data = ff.datasets.load("mnist", data_dir=args.data_dir, flatten=True)
    model_options, fit_options = RECIPES[args.recipe]
    batch_size = 128 if args.recipe.endswith("batch-128") else 256
    torch.manual_seed(0)
    flow = ff.models.nice(784, **model_options)
    fit_options = fit_options(args.epochs * -(-len(data.train) // batch_size), flow)
    history = ff.fit(
        flow,
        data.train,
        data.val,
        epochs=args.epochs,
        progress=False,
        checkpoint=args.checkpoint,
        resume=True,
        checkpoint_every=100,
        **fit_options,
    )
    row = row_of(args.recipe, history, model_options, fit_options)
    if history.stopped == "finished" and len(history.epochs) == args.epochs:
        test = ff.evaluate(flow, data.test)
        row.update(test_ll=-test.nll, test_ll_se=test.nll_se, test_bpd=test.bits_per_dim)
        if args.samples:  # the best epoch's model, as fit leaves it
            torch.manual_seed(0)
            ff.plots.plot_samples_images(flow, args.samples, n=64, levels=256)
    _write(args, row, argv)


def _write(args: argparse.Namespace, row: dict, argv: list[str] | None) -> None:
    """Put ``row`` into ``--out`` in place of the recipe's old row."""
    result = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    result["rows"] = [r for r in result["rows"] if r["recipe"] != args.recipe] + [row]
    result.update(
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        split="50,000 / 10,000 / 10,000 (train / validation / test)",
    )
    if not args.snapshot:  # the command that makes (or continues) the row
        result.setdefault("commands", {})[args.recipe] = " ".join(
            ["OMP_NUM_THREADS=1 python experiments/nice_pilots.py", *(argv or sys.argv[1:])]
        )
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


if __name__ == "__main__":
    main()
