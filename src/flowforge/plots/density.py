"""Figures of a density and its training: losses, 2-D densities and samples, conditional samples,
and how samples move through the layers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from flowforge.datasets.base import Split
from flowforge.flows.flow import Flow
from flowforge.plots.common import (
    MAX_COLUMNS,
    MAX_POINTS,
    ArrayLike,
    Bounds,
    _as_tensor,
    _check_2d,
    _evaluating,
    _figure,
    _frame,
    _grid,
    _log_prob,
    _numpy,
    _panel_inches,
    _points_2d,
    _save,
    _scatter,
    _square,
    _subsample,
    default_bounds,
)
from flowforge.transforms import ContinuousFlow, steps


def _series(history: Sequence[Mapping], key: str) -> np.ndarray:
    """``history[i][key]`` per epoch as floats, NaN where missing, None or not finite."""
    values = [entry.get(key) for entry in history]
    out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _plot_train_val(
    axes: Axes, epochs: np.ndarray, train: np.ndarray, val: np.ndarray, unit: str
) -> None:
    """Train and validation curves on ``axes``, with the best validation epoch marked."""
    if np.isfinite(train).any():
        axes.plot(epochs, train, color="tab:blue", label="train")
    if np.isfinite(val).any():
        seen = np.isfinite(val)
        axes.plot(epochs[seen], val[seen], color="tab:orange", marker=".", label="validation")
        best = int(np.nanargmin(val))
        axes.axvline(epochs[best], color="0.5", linestyle=":", linewidth=1)
        axes.plot(
            epochs[best],
            val[best],
            marker="*",
            markersize=12,
            color="tab:red",
            linestyle="none",
            label=f"best validation: {val[best]:.4g} {unit} (epoch {epochs[best]:g})",
        )
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)


def plot_losses(
    history: Sequence[Mapping], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Training curves: train and validation NLL (nats) per epoch, best validation marked.

    ``history`` holds one dict per epoch with ``epoch``, ``train_nll`` and ``val_nll`` (None
    where not evaluated), and optionally ``train_bpd`` / ``val_bpd`` (a second panel in
    bits/dim) and ``lr`` (a third panel, log scale, when it changes).
    """
    if not history:
        raise ValueError("history is empty; expected one dict per epoch")
    epochs = np.array([entry.get("epoch", i) for i, entry in enumerate(history)], dtype=float)
    panels = [("train_nll", "val_nll", "negative log-likelihood (nats)", "nats")]
    if any(entry.get(k) is not None for entry in history for k in ("train_bpd", "val_bpd")):
        panels.append(("train_bpd", "val_bpd", "bits/dim", "bits/dim"))
    if any(entry.get("train_fm_loss") is not None for entry in history):
        panels.append(("train_fm_loss", "val_fm_loss", "flow-matching loss (training)", ""))
    lr = _series(history, "lr")
    show_lr = np.isfinite(lr).any() and np.nanmin(lr) != np.nanmax(lr)
    count = len(panels) + show_lr
    figure = _figure(5.0 * count, 3.8)
    grid = figure.subplots(1, count, squeeze=False)[0]
    for axes, (train_key, val_key, label, unit) in zip(grid, panels, strict=False):
        _plot_train_val(axes, epochs, _series(history, train_key), _series(history, val_key), unit)
        axes.set_ylabel(label)
        axes.set_title(label.split(" (")[0], fontsize=10)
    if show_lr:
        grid[-1].plot(epochs, lr, color="tab:green")
        grid[-1].set_yscale("log")
        grid[-1].set(xlabel="epoch", ylabel="learning rate")
        grid[-1].set_title("learning rate", fontsize=10)
        grid[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        grid[-1].grid(alpha=0.3)
    figure.suptitle(title or "Training curves")
    return _save(figure, path)


def _heat_map(figure: Figure, axes: Axes, density: np.ndarray, bounds: Bounds) -> None:
    """``density`` (rows along ``x_2``) as an image over ``bounds``, with a colour bar."""
    (x0, x1), (y0, y1) = bounds
    image = axes.imshow(density, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis", vmin=0.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="density")


def plot_density_2d(
    flow: Flow,
    data: ArrayLike,
    path: str | os.PathLike,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    bounds: Bounds | None = None,
    resolution: int = 200,
) -> Path:
    """The data beside the flow's density $p(x) = e^{\\log p(x)}$ on a grid.

    Panels, with the same limits and equal aspect: a 2-D histogram of ``data`` ``(N, 2)``;
    the flow's density on a ``resolution`` x ``resolution`` grid, titled with its mean
    log-likelihood of ``data`` in nats; and, if ``true_log_prob`` (``(N, 2) -> (N,)``) is
    given, the true density the same way. ``bounds`` ``((xmin, xmax), (ymin, ymax))``
    defaults to `default_bounds()` of ``data``.
    """
    _check_2d(flow)
    points = _points_2d(data)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    bounds = default_bounds(points) if bounds is None else bounds
    grid = _grid(bounds, resolution)
    models = [("flow", flow.log_prob)]
    if true_log_prob is not None:
        models.append(("true", true_log_prob))
    width, height = _panel_inches(bounds)
    figure = _figure(width * (1 + len(models)) + 0.8 * len(models), height)
    panels = figure.subplots(1, 1 + len(models), squeeze=False)[0]
    bins = int(np.clip(np.sqrt(len(points) / 2), 25, 120))
    (x0, x1), (y0, y1) = bounds
    panels[0].hist2d(
        points[:, 0], points[:, 1], bins=bins, range=[[x0, x1], [y0, y1]], cmap="viridis"
    )
    _frame(panels[0], bounds, f"data ({len(points):,} points, 2-D histogram)")
    with _evaluating(flow):
        for axes, (name, log_prob) in zip(panels[1:], models, strict=True):
            mean = _log_prob(log_prob, _as_tensor(points, flow)).mean()
            density = np.exp(_log_prob(log_prob, _as_tensor(grid, flow)))
            _heat_map(figure, axes, density.reshape(resolution, resolution), bounds)
            _frame(axes, bounds, f"{name} density (mean log p(data) = {mean:.3f} nats)")
    figure.suptitle("Data and density")
    return _save(figure, path)


def plot_samples_2d(
    flow: Flow, data: ArrayLike, path: str | os.PathLike, n: int | None = None
) -> Path:
    """``n`` flow samples beside ``n`` data points ``(N, 2)``, as scatters with the same limits.

    ``n`` defaults to ``min(len(data), 5000)``; the limits are `default_bounds()` of the
    data, and the title counts the samples that fall outside them.
    """
    _check_2d(flow)
    points = _points_2d(data)
    n = min(len(points), MAX_POINTS) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    with _evaluating(flow):
        samples = _numpy(flow.sample(n))
    shown = _subsample(points, n)
    bounds = default_bounds(points)
    (x0, x1), (y0, y1) = bounds
    inside = (samples[:, 0] >= x0) & (samples[:, 0] <= x1)
    inside &= (samples[:, 1] >= y0) & (samples[:, 1] <= y1)
    width, height = _panel_inches(bounds)
    figure = _figure(2 * width, height)
    left, right = figure.subplots(1, 2)
    _scatter(left, shown, color="0.2")
    _frame(left, bounds, f"data ({len(shown):,} points)")
    _scatter(right, samples, color="tab:blue")
    outside = f", {int((~inside).sum()):,} outside the view" if not inside.all() else ""
    _frame(right, bounds, f"flow samples ({n:,}{outside})")
    figure.suptitle("Data and flow samples")
    return _save(figure, path)


def plot_conditional_samples(
    flow: Flow,
    train: Split,
    test: Split,
    path: str | Path,
    contexts: int = 4,
    n: int = 500,
    temperature: float = 1.0,
    title: str | None = None,
) -> Path:
    """Samples of a conditional flow ``q(x | c)`` for ``contexts`` test contexts, each panel
    beside the test points whose contexts are nearest to ``c`` (Euclidean distance after
    scaling each context column by its training standard deviation).

    The contexts are the test split's at evenly spaced quantiles (10% to 90%) of the first
    context column. Panels show the first two coordinates of ``x`` (a histogram when ``x``
    is 1-D)."""
    context = test.context.reshape(len(test), -1).double()
    x_test = test.x.reshape(len(test), -1).double()
    count = max(1, min(contexts, len(test)))
    order = context[:, 0].argsort()
    positions = np.linspace(0.1, 0.9, count) if count > 1 else np.array([0.5])
    picks = order[np.round(positions * (len(test) - 1)).astype(int)]
    scale = train.context.reshape(len(train), -1).double().std(0).nan_to_num(1.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    near = min(len(test), max(10, len(test) // 10))
    was_training = flow.training
    flow.eval()
    with torch.no_grad():
        chosen = context[picks].to(flow.device, flow.dtype)
        samples = flow.sample(n, context=chosen, temperature=temperature)
    flow.train(was_training)
    samples = samples.reshape(n, count, -1).transpose(0, 1).double().cpu()  # per context
    figure = _figure(3.2 * count, 3.6)
    panels = figure.subplots(1, count, squeeze=False)[0]
    for axes, pick, drawn in zip(panels, picks.tolist(), samples, strict=True):
        c = context[pick]
        nearest = x_test[((context - c) / scale).norm(dim=1).argsort()[:near]]
        if drawn.shape[1] >= 2:
            axes.scatter(drawn[:, 0], drawn[:, 1], s=3, alpha=0.4, linewidths=0, label="q(x|c)")
            axes.scatter(
                nearest[:, 0],
                nearest[:, 1],
                s=9,
                color="black",
                linewidths=0,
                label=f"{near} test x, nearest c",
            )
            # the view holds every shown test point and the bulk (1%-99%) of the samples
            low, high = torch.quantile(drawn[:, :2], torch.tensor([0.01, 0.99]).double(), dim=0)
            low = torch.minimum(low, nearest[:, :2].min(0).values)
            high = torch.maximum(high, nearest[:, :2].max(0).values)
            pad = 0.15 * (high - low).clamp_min(1e-6)
            axes.set_xlim(float(low[0] - pad[0]), float(high[0] + pad[0]))
            axes.set_ylim(float(low[1] - pad[1]), float(high[1] + pad[1]))
            axes.set_xlabel("$x_1$")
            axes.set_ylabel("$x_2$")
        else:
            axes.hist(drawn[:, 0].numpy(), bins=40, density=True, alpha=0.5, label="q(x|c)")
            axes.hist(
                nearest[:, 0].numpy(),
                bins=15,
                density=True,
                histtype="step",
                color="black",
                label=f"{near} test x, nearest c",
            )
            axes.set_xlabel("$x$")
        shown = ", ".join(f"{v:.3g}" for v in c[:4].tolist()) + (", ..." if len(c) > 4 else "")
        axes.set_title(f"c = ({shown})", fontsize=9)
    panels[0].legend(fontsize=7, loc="best")
    figure.suptitle(title or "conditional samples")
    return _save(figure, path)


def layer_stages(flow: Flow, x: ArrayLike, every: int = 2) -> list[tuple[str, Tensor]]:
    """Points ``x`` ``(N, *event_shape)`` mapped to the latent space and back, in stages.

    The first stage is ``z = f(x)`` through every step of ``flow.transform``; each later stage
    undoes ``every`` more steps from the latent side (fewer in the last), and the last is the
    reconstruction of ``x``. So ``K`` steps give ``ceil(K / every) + 1`` stages, each a
    ``(label, points)`` pair with points ``(N, *event_shape)`` in the flow's dtype and device.

    A continuous flow (one `ContinuousFlow`) has no layers: its stages are the points along
    their trajectories from $t = 0$ (the latent) to $t = 1$ (the data), at ``every + 3``
    equally spaced times (5 by default).
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    layers = steps(flow.transform)
    if len(layers) == 1 and isinstance(layers[0], ContinuousFlow):
        return _time_stages(flow, layers[0], x, every + 3)
    with _evaluating(flow):
        state = _as_tensor(x, flow)
        for layer in layers:
            state, _ = layer(state)
        stages = [("latent z = f(x)", state)]
        for undone, layer in enumerate(reversed(layers), start=1):
            state, _ = layer.inverse(state)
            if undone == len(layers):
                stages.append((f"data x (all {undone} layers undone)", state))
            elif undone % every == 0:
                stages.append((f"{undone} of {len(layers)} layers undone", state))
    return stages


def _time_stages(
    flow: Flow, ode: ContinuousFlow, x: ArrayLike, count: int
) -> list[tuple[str, Tensor]]:
    """The points of ``x`` carried to the latent and back along their trajectories, at
    ``count`` equally spaced times from 0 to 1."""
    times = [k / (count - 1) for k in range(count)]
    with _evaluating(flow):
        z, _ = ode(_as_tensor(x, flow))
        path = ode.trajectory(z, times)
    labels = [f"t = {t:.2f}" for t in times]
    labels[0], labels[-1] = "latent z = f(x), t = 0", "data x, t = 1"
    return list(zip(labels, path, strict=True))


def _point_colours(points: np.ndarray) -> np.ndarray:
    """A value in ``[0, 1)`` per ``(N, 2)`` point: its angle about the points' median."""
    centre = np.median(points, axis=0)
    angle = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    return (angle + np.pi) / (2 * np.pi)


def plot_layers_2d(flow: Flow, data: ArrayLike, path: str | os.PathLike, every: int = 2) -> Path:
    """How points move through the flow (after the Real NVP paper's figure).

    ``data`` ``(N, 2)`` (at most 5000 are used) is mapped to the latent space; the panels
    then show the latent points and the state after undoing each further ``every`` layers,
    ending in data space (see `layer_stages()`). Every point keeps one colour, its angle
    about the data's median, so it can be followed from panel to panel. Panels wrap after
    five per row; each has its own limits and equal aspect.
    """
    _check_2d(flow)
    points = _subsample(_points_2d(data), MAX_POINTS)
    colours = _point_colours(points)
    stages = layer_stages(flow, points, every)
    columns = min(len(stages), MAX_COLUMNS)
    rows = math.ceil(len(stages) / columns)
    figure = _figure(3.2 * columns, 3.4 * rows)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for i, (axes, (label, state)) in enumerate(zip(panels, stages, strict=False)):
        state = _numpy(state)
        axes.scatter(
            state[:, 0], state[:, 1], c=colours, cmap="hsv", vmin=0, vmax=1, s=3, linewidths=0
        )
        variable = "z" if i == 0 else ("x" if i == len(stages) - 1 else "h")
        _frame(axes, _square(default_bounds(state)), label, variable)
    for axes in panels[len(stages) :]:
        axes.set_visible(False)
    continuous = isinstance(flow.transform, ContinuousFlow)
    per_panel = "along the ODE's time" if continuous else f"{every} layer{'s' * (every != 1)}"
    per_panel += "" if continuous else " per panel"
    figure.suptitle(
        f"Points through the flow: latent to data, {per_panel} (colour: angle in data space)"
    )
    return _save(figure, path)
