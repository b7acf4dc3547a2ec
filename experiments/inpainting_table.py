"""PSNR of MAP inpainting with trained flows as priors, beside the mean-image and Gaussian
conditional-mean fills, for several masks.

    python experiments/inpainting_table.py runs/mnist-nice runs/mnist-glow \
        --masks center top random50 --image first:32 --out runs/inpainting

For each run and mask this calls :func:`flowforge.runs.inpaint_run` (which writes the figure
``OUT/RUN-MASK/inpainting.png``); the table (markdown) is printed and written to
``OUT/table.md``, every report to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tables import write_results

from flowforge import runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of image models")
    parser.add_argument("--masks", nargs="+", default=["center", "top", "random50"])
    parser.add_argument("--image", default="first:32", help="test images (see flowforge inpaint)")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/inpainting")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        "| mask | method | PSNR (dB) | s.e. | log p(fill) >= log p(truth) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    results = []
    for mask in args.masks:
        baseline_rows = []
        for run in args.runs:
            started = time.perf_counter()
            out = Path(args.out) / f"{Path(run).name}-{mask}"
            report = runs.inpaint_run(
                run, args.image, mask, out, restarts=args.restarts, steps=args.steps, lr=args.lr
            )
            seconds = time.perf_counter() - started
            results.append(report)
            for name, scores in report.items():
                if not isinstance(scores, dict):
                    continue
                values = torch.tensor(scores["psnr_per_image"])
                se = (values.std() / len(values) ** 0.5).item()
                label = f"{Path(run).name} prior" if name == "flow" else name
                row = f"| {mask} | {label} | {scores['psnr']:.2f} | {se:.2f} |"
                if name == "flow":
                    rows.append(f"{row} {100 * scores['map_beats_truth']:.0f}% | {seconds:.0f} |")
                elif len(baseline_rows) < 2:
                    baseline_rows.append(f"{row} | |")
            print(f"{run} {mask}: done in {seconds:.0f} s", flush=True)
        rows += baseline_rows
    write_results(args.out, "\n".join(rows), results)


if __name__ == "__main__":
    main()
