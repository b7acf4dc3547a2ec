"""NICE on MNIST: the diagonal scaling from zero (the paper) against the scaling initialised
from the data (``models.nice(scale_init="data")``), a short pilot of the same recipe
otherwise (``ff.fit``'s defaults: Adam 1e-3, batch 256, cosine over ``--plan`` epochs).

    OMP_NUM_THREADS=1 python experiments/nice_scale_init.py [--epochs 2] [--plan 100] \\
        [--data-dir ../shared/data/mnist] [--out experiments/nice_scale_init.json]

Records, for each variant, the validation log-likelihood in nats (``-val_nll`` on [0, 1]^784,
the paper's scale) after every epoch, with the training seconds, in the JSON.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--plan", type=int, default=100, help="the epochs the schedule plans")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/nice_scale_init.json")
    args = parser.parse_args(argv)
    data = ff.datasets.load("mnist", data_dir=args.data_dir, flatten=True)
    runs = []
    for scale_init in ("zeros", "data"):
        torch.manual_seed(0)
        flow = ff.models.nice(784, scale_init=scale_init)
        curve: list[dict] = []
        clock = [0.0]

        def record(epoch: dict, curve=curve, clock=clock, name=scale_init) -> None:
            clock[0] += epoch["seconds"]
            curve.append(
                {"epoch": epoch["epoch"], "seconds": clock[0], "val_ll": -epoch["val_nll"]}
            )
            print(name, curve[-1], flush=True)
            if epoch["epoch"] >= args.epochs:
                raise KeyboardInterrupt  # fit stops after the step under way, whole

        ff.fit(flow, data.train, data.val, epochs=args.plan, progress=False, callback=record)
        runs.append({"scale_init": scale_init, "curve": curve})
    result = {
        "command": " ".join(["python experiments/nice_scale_init.py", *(argv or sys.argv[1:])]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
