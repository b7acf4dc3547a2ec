"""The continuous flows of a ``benchmarks.cnf_toys --save`` run as one figure: each toy's data
beside the density of each model, by its exact log_prob on a grid.

    python -m benchmarks.cnf_figure WEIGHTS [--minutes 3] [--models flowforge flowforge-fm
        flowforge-fm-ot zuko] [--resolution 100] [--out docs/figures/cnf-toys.png]

``WEIGHTS`` is the folder of ``--save``; a toy or model without weights there is left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import flowforge as ff
from benchmarks.cnf_toys import Model
from flowforge.plots.common import _figure, _grid, _save, default_bounds

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "cnf-toys.png"
TITLES = {
    "flowforge": "likelihood",
    "flowforge-fm": "flow matching",
    "flowforge-fm-ot": "flow matching, OT",
    "zuko": "zuko (likelihood)",
    "torchcfm-icfm": "torchcfm I-CFM",
    "torchcfm-otcfm": "torchcfm OT-CFM",
}


def density(model: Model, grid: np.ndarray) -> np.ndarray:
    points = torch.as_tensor(grid, dtype=torch.float32)
    with torch.no_grad():
        values = torch.cat([model.log_prob(chunk) for chunk in points.split(5000)])
    return values.exp().numpy()


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--models", nargs="+", default=list(TITLES)[:3], choices=list(TITLES))
    parser.add_argument("--data", nargs="+", default=list(ff.datasets.toys.TOYS))
    parser.add_argument("--resolution", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = "{}-{:g}min-{}.safetensors"
    toys = [
        t for t in args.data if (args.weights / path.format(t, args.minutes, "flowforge")).exists()
    ]
    if not toys:
        raise SystemExit(f"no weights of a {args.minutes:g}-minute run in {args.weights}")
    figure = _figure(1.9 * (1 + len(args.models)), 1.9 * len(toys))
    panels = figure.subplots(len(toys), 1 + len(args.models), squeeze=False)
    for row, toy in zip(panels, toys, strict=True):
        data = ff.datasets.load(toy, n=20_000, seed=0).test.x.numpy()
        (x0, x1), (y0, y1) = bounds = default_bounds(data)
        row[0].hist2d(*data.T, bins=60, range=[[x0, x1], [y0, y1]], cmap="viridis")
        row[0].set_aspect("equal")
        row[0].set_ylabel(toy)
        grid = _grid(bounds, args.resolution)
        for axes, library in zip(row[1:], args.models, strict=True):
            weights = args.weights / path.format(toy, args.minutes, library)
            if weights.exists():
                model = Model(library, 0)
                model.flow.load_state_dict(load_file(str(weights)))
                model.flow.eval()
                image = density(model, grid).reshape(args.resolution, args.resolution)
                axes.imshow(image, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis")
        for axes, title in zip(
            row, ["data (test)"] + [TITLES[m] for m in args.models], strict=True
        ):
            axes.set_xticks([]), axes.set_yticks([])
            if toy == toys[0]:
                axes.set_title(title, fontsize=9)
    figure.suptitle(f"Continuous flows after {args.minutes:g} minutes of training (1 thread)")
    print(_save(figure, args.out))


if __name__ == "__main__":
    main()
