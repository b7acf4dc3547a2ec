"""Figures of a variational fit: the target beside the flow, the ELBO, a grid of targets."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from flowforge.flows.flow import Flow
from flowforge.plots.common import (
    PANEL_INCHES,
    Bounds,
    _as_tensor,
    _evaluating,
    _figure,
    _grid,
    _log_prob,
    _numpy,
    _save,
)


def vi_density_panels(
    flow: Flow, target: Callable[[Tensor], Tensor], bounds: Bounds, resolution: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """``(true, learned)``: the target's and the flow's densities on a ``resolution``-square
    grid over ``bounds`` (rows along ``x_2``), each normalised over the grid, so the target's
    normaliser need not be known."""
    (x0, x1), (y0, y1) = bounds
    cell = (x1 - x0) * (y1 - y0) / (resolution - 1) ** 2
    densities = []
    with _evaluating(flow):
        grid = _as_tensor(_grid(bounds, resolution), flow)
        for log_prob in (target, flow.log_prob):
            values = _log_prob(log_prob, grid)
            density = np.exp(values - values.max()).reshape(resolution, resolution)
            densities.append(density / (density.sum() * cell))
    return densities[0], densities[1]


def plot_vi_2d(
    flow: Flow,
    target: Callable[[Tensor], Tensor],
    path: str | os.PathLike,
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0)),
    resolution: int = 200,
    n: int = 5000,
    title: str | None = None,
) -> Path:
    """Three panels: the target density $\\tilde p / Z$, the flow's density ``q``
    (both normalised over the box), and ``n`` samples of ``q``. ``target`` maps ``(N, 2)`` to
    the unnormalised log-density ``(N,)``."""
    true, learned = vi_density_panels(flow, target, bounds, resolution)
    with _evaluating(flow):
        samples = _numpy(flow.sample(n))
    figure = _figure(3 * PANEL_INCHES, PANEL_INCHES)
    axes = figure.subplots(1, 3)
    extent = (*bounds[0], *bounds[1])
    for ax, values, label in ((axes[0], true, "target p"), (axes[1], learned, "flow q")):
        ax.imshow(values, origin="lower", extent=extent, cmap="viridis", aspect="equal")
        ax.set_title(label)
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, color="tab:blue")
    axes[2].set_xlim(*bounds[0])
    axes[2].set_ylim(*bounds[1])
    axes[2].set_aspect("equal")
    axes[2].set_title(f"{n} samples of q")
    for ax in axes:
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_elbo(
    records: Sequence[Mapping], path: str | os.PathLike, title: str | None = None
) -> Path:
    """The ELBO (nats) against the training step, with the annealing $\\beta$ if used."""
    steps = [r["step"] for r in records]
    figure = _figure(6.0, 3.6)
    ax = figure.subplots()
    ax.plot(steps, [r["elbo"] for r in records], color="tab:blue", label="ELBO")
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO (nats)")
    if any(r.get("beta", 1.0) != 1.0 for r in records):
        twin = ax.twinx()
        twin.plot(steps, [r["beta"] for r in records], color="tab:gray", ls="--", label="beta")
        twin.set_ylabel("annealing beta")
        twin.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title(title or "variational training")
    return _save(figure, path)


def plot_vi_grid(
    rows: Sequence[tuple[str, Callable[[Tensor], Tensor], Sequence[tuple[str, Flow]]]],
    path: str | os.PathLike,
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0)),
    resolution: int = 150,
) -> Path:
    """Rezende & Mohamed's figure 3: one row per target, its true density, then the density of
    each fitted flow. ``rows``: ``(target name, log p~, [(column label, flow), ...])``."""
    columns = 1 + max(len(flows) for _, _, flows in rows)
    figure = _figure(2.2 * columns, 2.2 * len(rows))
    axes = np.atleast_2d(figure.subplots(len(rows), columns, squeeze=False))
    extent = (*bounds[0], *bounds[1])
    for i, (name, target, flows) in enumerate(rows):
        for j in range(columns):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j > len(flows):
                axes[i, j].axis("off")
        true = None
        for j, (label, flow) in enumerate(flows, start=1):
            true, learned = vi_density_panels(flow, target, bounds, resolution)
            axes[i, j].imshow(learned, origin="lower", extent=extent, cmap="viridis")
            if i == 0:
                axes[i, j].set_title(label, fontsize=9)
        if true is not None:
            axes[i, 0].imshow(true, origin="lower", extent=extent, cmap="viridis")
        axes[i, 0].set_ylabel(name)
        if i == 0:
            axes[i, 0].set_title("true density", fontsize=9)
    return _save(figure, path)
