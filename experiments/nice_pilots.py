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
    """A factory of Adam over the parameters (the fused form where torch has it)."""
    return lambda parameters: torch.optim.Adam(parameters, lr=lr, betas=betas, eps=eps)


# recipe -> (the model's keywords, fit's keywords); the paper: 4 additive couplings of
# 5 x 1000 ReLU networks, diagonal exp(s) scaling, logistic base (models.nice's defaults)
RECIPES = {
    "zeros": ({}, {}),  # fit's defaults: Adam 1e-3, batch 256, cosine over the epochs
    "data-init": ({"scale_init": "data"}, {}),
    "data-init-paper-adam": (
        {"scale_init": "data"},
        {"optimizer": adam((0.9, 0.99), 1e-4)},
    ),
    "data-init-ema": ({"scale_init": "data"}, {"ema": 0.999}),
    "data-init-batch-128": ({"scale_init": "data"}, {"batch_size": 128}),
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
