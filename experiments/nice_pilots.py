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


# recipe -> (the model's keywords, fit's keywords given the planned steps); the paper's model:
# 4 additive couplings of 5 x 1000 ReLU networks, diagonal exp(s) scaling, logistic base
# (models.nice's defaults). fit's defaults: Adam 1e-3, batch 256, cosine to 0 over the epochs.
RECIPES = {
    "zeros": ({}, lambda steps: {}),
    "data-init": ({"scale_init": "data"}, lambda steps: {}),
    "data-init-paper-adam": (
        {"scale_init": "data"},
        lambda steps: {"optimizer": adam((0.9, 0.99), 1e-4)},
    ),
    "data-init-ema": ({"scale_init": "data"}, lambda steps: {"ema": 0.999}),
    # the command line's MNIST default: a constant rate (the 1936.9 run of the results)
    "zeros-constant": ({}, lambda steps: {"schedule": None}),
    "data-init-constant": ({"scale_init": "data"}, lambda steps: {"schedule": None}),
    "data-init-lr-2e-3": ({"scale_init": "data"}, lambda steps: {"lr": 2e-3}),
    "data-init-warmup-floor": (
        {"scale_init": "data"},
        lambda steps: {
            "optimizer": adam((0.9, 0.999), 1e-8, lr=2e-3),
            "scheduler": warmup_cosine(steps),
        },
    ),
    "data-init-batch-128": ({"scale_init": "data"}, lambda steps: {"batch_size": 128}),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/nice_pilots.json")
    args = parser.parse_args(argv)
    data = ff.datasets.load("mnist", data_dir=args.data_dir, flatten=True)
    model_options, fit_options = RECIPES[args.recipe]
    batch_size = 128 if args.recipe.endswith("batch-128") else 256
    fit_options = fit_options(args.epochs * -(-len(data.train) // batch_size))
    torch.manual_seed(0)
    flow = ff.models.nice(784, **model_options)
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
    seconds, curve = 0.0, []
    for epoch in history.epochs:
        seconds += epoch["seconds"]
        val = epoch["val_nll"]  # None where it was not finite
        ll = None if val is None else -val
        curve.append({"epoch": epoch["epoch"], "seconds": round(seconds, 1), "val_ll": ll})
    row = {
        "recipe": args.recipe,
        "model": {k: str(v) for k, v in model_options.items()},
        "fit": {k: v if isinstance(v, int | float) else "RECIPES" for k, v in fit_options.items()},
        "epochs": len(history.epochs),
        "stopped": history.stopped,
        "best_epoch": history.best_epoch,
        "curve": curve,
    }
    if history.stopped == "finished" and len(history.epochs) == args.epochs:
        test = ff.evaluate(flow, data.test)
        row.update(test_ll=-test.nll, test_ll_se=test.nll_se, test_bpd=test.bits_per_dim)
    result = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    result["rows"] = [r for r in result["rows"] if r["recipe"] != args.recipe] + [row]
    result.update(
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        n_train=len(data.train),
        n_val=len(data.val),
        n_test=len(data.test),
    )
    result.setdefault("commands", {})[args.recipe] = " ".join(
        ["OMP_NUM_THREADS=1 python experiments/nice_pilots.py", *(argv or sys.argv[1:])]
    )
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


if __name__ == "__main__":
    main()
