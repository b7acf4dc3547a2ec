"""Figures of flows and their training, written to image files (PNG by default).

Every ``plot_*`` function evaluates the flow under ``torch.no_grad()`` in eval mode (its
training mode is restored afterwards), in the flow's dtype and on its device, draws on a
standalone :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no backend switch,
nothing left open), creates the parent directories of ``path``, and returns the
:class:`~pathlib.Path` written. The format follows the file's suffix (``.png`` if it has none).

Densities are in nats; bits/dim are shown where a history records them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from . import atomic
from .datasets.base import Split
from .flow import Flow
from .transforms import steps

DPI = 150
MAX_POINTS = 5000
PANEL_INCHES = 4.0
MAX_COLUMNS = 5
DENSITY_CHUNK = 8192

Bounds = tuple[tuple[float, float], tuple[float, float]]
ArrayLike = Tensor | np.ndarray


# --- shared helpers ----------------------------------------------------------------------


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure of ``width`` x ``height`` inches with its own Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` atomically (creating its directories), release it, return
    the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, dpi=DPI, format=path.suffix[1:].lower() or "png")
    figure.clear()
    return path


@contextmanager
def _evaluating(flow: Flow) -> Iterator[None]:
    """No gradients and eval mode inside; the flow's previous mode is restored on exit."""
    was_training = flow.training
    flow.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        flow.train(was_training)


def _as_tensor(values: ArrayLike, flow: Flow) -> Tensor:
    """``values`` as a tensor in the flow's dtype and on its device."""
    return torch.as_tensor(values).to(dtype=flow.dtype, device=flow.device)


def _numpy(values: ArrayLike) -> np.ndarray:
    """A float64 CPU array of a tensor or array."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _points_2d(data: ArrayLike, name: str = "data") -> np.ndarray:
    """``data`` as an ``(N, 2)`` float64 array, with a one-line error for anything else."""
    points = _numpy(data)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1, got {points.shape}")
    return points


def _check_2d(flow: Flow) -> None:
    if tuple(flow.event_shape) != (2,):
        raise ValueError(f"this figure needs a flow over 2-D points, got {tuple(flow.event_shape)}")


def _subsample(points: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most ``n`` rows of ``points``, chosen at random (fixed seed) when there are more."""
    if len(points) <= n:
        return points
    keep = np.random.default_rng(seed).choice(len(points), size=n, replace=False)
    return points[np.sort(keep)]


def _limits(values: np.ndarray, margin: float = 0.1) -> tuple[float, float]:
    """A view of 1-D ``values``: their 0.5%-99.5% quantiles widened by ``margin`` of the span."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    low, high = np.quantile(finite, [0.005, 0.995])
    pad = margin * (high - low) if high > low else max(1.0, abs(low)) * 0.5
    return float(low - pad), float(high + pad)


def default_bounds(points: ArrayLike, margin: float = 0.1) -> Bounds:
    """Axis limits ``((xmin, xmax), (ymin, ymax))`` for ``(N, 2)`` points: per axis, the
    0.5% and 99.5% quantiles widened by ``margin`` times their span."""
    points = _points_2d(points, "points")
    return _limits(points[:, 0], margin), _limits(points[:, 1], margin)


def _panel_inches(bounds: Bounds) -> tuple[float, float]:
    """Width and height of one panel whose axes have equal aspect over ``bounds``."""
    (x0, x1), (y0, y1) = bounds
    ratio = min(max((y1 - y0) / (x1 - x0), 0.5), 2.0)
    return PANEL_INCHES, PANEL_INCHES * ratio + 0.5


def _square(bounds: Bounds) -> Bounds:
    """``bounds`` widened about their centre so that both axes span the same length."""
    (x0, x1), (y0, y1) = bounds
    half = max(x1 - x0, y1 - y0) / 2
    xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
    return (xc - half, xc + half), (yc - half, yc + half)


def _frame(axes: Axes, bounds: Bounds, title: str, variable: str = "x") -> None:
    """Limits, equal aspect, axis labels (``variable`` with subscripts 1, 2) and title."""
    (x0, x1), (y0, y1) = bounds
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_aspect("equal")
    axes.set_xlabel(f"${variable}_1$")
    axes.set_ylabel(f"${variable}_2$")
    axes.set_title(title, fontsize=10)


def _scatter(axes: Axes, points: np.ndarray, **style) -> None:
    """A scatter of many points: small, slightly transparent, no edges."""
    size = 4.0 if len(points) <= 1000 else 1.5
    axes.scatter(points[:, 0], points[:, 1], s=size, linewidths=0, **{"alpha": 0.6, **style})


# --- training curves ---------------------------------------------------------------------


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


# --- 2-D densities and samples -----------------------------------------------------------


def _grid(bounds: Bounds, resolution: int) -> np.ndarray:
    """Cell centres ``(resolution**2, 2)`` of a grid over ``bounds``, rows along ``x_2``."""
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def _log_prob(log_prob: Callable[[Tensor], Tensor], points: Tensor) -> np.ndarray:
    """``log_prob`` of ``(N, D)`` points in chunks, as a float64 array, -inf where not finite."""
    chunks = [log_prob(chunk) for chunk in points.split(DENSITY_CHUNK)]
    values = _numpy(torch.cat(chunks))
    values[~np.isfinite(values)] = -np.inf
    return values


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
    """The data beside the flow's density :math:`p(x) = e^{\\log p(x)}` on a grid.

    Panels, with the same limits and equal aspect: a 2-D histogram of ``data`` ``(N, 2)``;
    the flow's density on a ``resolution`` x ``resolution`` grid, titled with its mean
    log-likelihood of ``data`` in nats; and, if ``true_log_prob`` (``(N, 2) -> (N,)``) is
    given, the true density the same way. ``bounds`` ``((xmin, xmax), (ymin, ymax))``
    defaults to :func:`default_bounds` of ``data``.
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

    ``n`` defaults to ``min(len(data), 5000)``; the limits are :func:`default_bounds` of the
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
    samples = samples.reshape(count, n, -1).double().cpu()
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


# --- points through the layers -----------------------------------------------------------


def layer_stages(flow: Flow, x: ArrayLike, every: int = 2) -> list[tuple[str, Tensor]]:
    """Points ``x`` ``(N, *event_shape)`` mapped to the latent space and back, in stages.

    The first stage is ``z = f(x)`` through every step of ``flow.transform``; each later stage
    undoes ``every`` more steps from the latent side (fewer in the last), and the last is the
    reconstruction of ``x``. So ``K`` steps give ``ceil(K / every) + 1`` stages, each a
    ``(label, points)`` pair with points ``(N, *event_shape)`` in the flow's dtype and device.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    layers = steps(flow.transform)
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


def _point_colours(points: np.ndarray) -> np.ndarray:
    """A value in ``[0, 1)`` per ``(N, 2)`` point: its angle about the points' median."""
    centre = np.median(points, axis=0)
    angle = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    return (angle + np.pi) / (2 * np.pi)


def plot_layers_2d(flow: Flow, data: ArrayLike, path: str | os.PathLike, every: int = 2) -> Path:
    """How points move through the flow (after the Real NVP paper's figure).

    ``data`` ``(N, 2)`` (at most 5000 are used) is mapped to the latent space; the panels
    then show the latent points and the state after undoing each further ``every`` layers,
    ending in data space (see :func:`layer_stages`). Every point keeps one colour, its angle
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
    figure.suptitle(
        f"Points through the flow: latent to data, {every} layer{'s' * (every != 1)} per panel"
        " (colour: angle in data space)"
    )
    return _save(figure, path)


# --- images ------------------------------------------------------------------------------


def _image_batch(images: ArrayLike) -> np.ndarray:
    """``(N, C, H, W)``, ``(N, H, W)`` or ``(N, s*s)`` images as ``(N, H, W, C)`` in [0, 1]."""
    batch = _numpy(images)
    if batch.ndim == 2:
        side = math.isqrt(batch.shape[1])
        if side * side != batch.shape[1]:
            raise ValueError(
                f"flat images (N, D) need D to be a perfect square, got D = {batch.shape[1]}"
            )
        batch = batch.reshape(-1, 1, side, side)
    elif batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] not in (1, 3) or batch.shape[0] == 0:
        raise ValueError(
            "images must be (N, C, H, W) with C = 1 or 3, (N, H, W) or (N, s*s) with N >= 1,"
            f" got {tuple(np.shape(images))}"
        )
    return np.clip(np.nan_to_num(batch, nan=0.0), 0.0, 1.0).transpose(0, 2, 3, 1)


def _mosaic(batch: np.ndarray, columns: int, pad: int) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images into one ``(rows*(H+pad)+pad, ...)`` image, grey gaps."""
    n, height, width, channels = batch.shape
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 0.5)
    for i, image in enumerate(batch):
        top = pad + (i // columns) * (height + pad)
        left = pad + (i % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return canvas


def plot_image_grid(
    images: ArrayLike,
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
) -> Path:
    """Images in a grid, ``nrow`` per row (default ``ceil(sqrt(N))``), without ticks.

    ``images`` is ``(N, C, H, W)`` with ``C = 1`` (grey) or ``3`` (RGB), ``(N, H, W)`` grey,
    or ``(N, D)`` with ``D = s*s`` (grey ``s`` x ``s``). Values are clipped to ``[0, 1]``
    (NaN shows as 0); images are separated by thin grey lines.
    """
    batch = _image_batch(images)
    columns = math.ceil(math.sqrt(len(batch))) if nrow is None else nrow
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    columns = min(columns, len(batch))
    mosaic = _mosaic(batch, columns, pad=max(1, batch.shape[1] // 14))
    width = float(np.clip(0.9 * columns, 3.0, 8.0))
    image_height = width * mosaic.shape[0] / mosaic.shape[1]
    title_height = 0.4 if title else 0.0
    figure = _figure(width, image_height + title_height, layout=None)
    axes = figure.add_axes((0.0, 0.0, 1.0, image_height / (image_height + title_height)))
    if mosaic.shape[2] == 1:
        axes.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(mosaic, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_samples_images(
    flow: Flow,
    path: str | os.PathLike,
    n: int = 64,
    temperature: float = 1.0,
    image_shape: Sequence[int] | None = None,
    levels: int | None = None,
) -> Path:
    """A grid of ``n`` images sampled from the flow at ``temperature`` (see :meth:`Flow.sample`).

    A flow over flat vectors ``(D,)`` needs ``image_shape`` ``(C, H, W)`` unless ``D`` is a
    perfect square (grey). Samples live in the model space ``[0, 1]`` of dequantised data and
    are clipped to it; with ``levels`` ``L`` (e.g. 256) they are also rounded down to the
    data's discrete levels ``k = floor(L x)`` and shown as ``k / (L - 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    with _evaluating(flow):
        samples = flow.sample(n, temperature=temperature)
    samples = _numpy(samples)
    if image_shape is not None:
        samples = samples.reshape(n, *image_shape)
    elif samples.ndim == 2 and math.isqrt(samples.shape[1]) ** 2 != samples.shape[1]:
        raise ValueError(
            f"samples are vectors of {samples.shape[1]} values, not a square image;"
            " pass image_shape=(C, H, W)"
        )
    clipped = float(np.mean((samples < 0) | (samples > 1) | np.isnan(samples)))
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        samples = np.minimum(np.floor(np.clip(samples, 0, 1) * levels), levels - 1)
        samples = samples / (levels - 1)
    title = f"{n} samples at temperature T = {temperature:g}"
    if clipped > 0:
        title += f" ({100 * clipped:.1f}% of values clipped to [0, 1])"
    return plot_image_grid(samples, path, title=title)


def interpolate_latent(flow: Flow, start: Tensor, end: Tensor, steps: int = 8) -> Tensor:
    r"""Images along the straight line between the latents of ``start`` and ``end``:

    .. math:: z_a = f(x_a),\ z_b = f(x_b),\quad x_t = f^{-1}\big((1 - t) z_a + t z_b\big),
              \quad t = 0, \tfrac1{n-1}, \dots, 1

    ``start`` and ``end`` are ``(P, *event_shape)`` pairs of images in model space; returns
    ``(P, steps, *event_shape)``, with ``x_0 = x_a`` and ``x_1 = x_b`` up to round-off.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    start, end = _as_tensor(start, flow), _as_tensor(end, flow)
    if start.shape != end.shape:
        raise ValueError(f"start and end must have one shape, got {start.shape} and {end.shape}")
    with _evaluating(flow), torch.no_grad():
        z_a, _ = flow.transform(start)
        z_b, _ = flow.transform(end)
        t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)
        t = t.view(1, steps, *([1] * (z_a.dim() - 1)))
        z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
        x, _ = flow.transform.inverse(z.flatten(0, 1))
    return x.reshape(start.shape[0], steps, *start.shape[1:])


def plot_interpolation(
    flow: Flow,
    start: ArrayLike,
    end: ArrayLike,
    path: str | os.PathLike,
    steps: int = 8,
    image_shape: Sequence[int] | None = None,
) -> Path:
    """One row per pair: the images on the line between the latents of ``start[i]`` and
    ``end[i]`` (:func:`interpolate_latent`), from ``start[i]`` on the left to ``end[i]``."""
    path_images = interpolate_latent(flow, start, end, steps)
    images = _numpy(path_images.flatten(0, 1))
    if image_shape is not None:
        images = images.reshape(-1, *image_shape)
    title = "interpolation in latent space"
    return plot_image_grid(images, path, nrow=steps, title=title)


# --- variational inference ---------------------------------------------------------------


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
    """Three panels: the target density :math:`\\tilde p / Z`, the flow's density ``q``
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
    """The ELBO (nats) against the training step, with the annealing :math:`\\beta` if used."""
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


# --- inpainting ----------------------------------------------------------------------------


def plot_inpainting(
    original: ArrayLike,
    mask: ArrayLike,
    inpainted: ArrayLike,
    path: str | os.PathLike,
    *,
    methods: Sequence[tuple[str, ArrayLike]] = (),
    labels: Sequence[str] = ("original", "masked", "inpainted"),
    missing_colour: str = "red",
    title: str | None = None,
) -> Path:
    """The NICE paper's inpainting figure (Dinh et al. 2014, figure 4): one column per image.

    Rows, each labelled on the left: the ``original`` images; the same images with their
    missing pixels (``mask`` True or nonzero) painted in ``missing_colour`` (any matplotlib
    colour name, named in the row's label); the ``inpainted`` images; then one row per
    ``(label, images)`` pair of ``methods`` (e.g. baselines). Images are ``(N, C, H, W)`` with
    ``C = 1`` or ``3``, ``(N, H, W)`` or ``(N, s*s)`` as for :func:`plot_image_grid`, all of the
    same shape, clipped to ``[0, 1]``; ``mask`` has their shape or one image's shape, and a
    position is shown missing when any of its channels is.
    """
    from matplotlib.colors import to_rgb

    if len(labels) != 3:
        raise ValueError(
            f"labels must name the 3 rows (original, masked, inpainted), got {labels!r}"
        )
    shape = np.shape(original)
    missing = _numpy(mask) != 0
    if missing.shape not in (shape, shape[1:]):
        raise ValueError(
            f"mask must have the images' shape {shape} or one image's {shape[1:]},"
            f" got {missing.shape}"
        )
    missing = _image_batch(np.broadcast_to(missing, shape).astype(float)).max(axis=-1) > 0
    rows = [(labels[0], original), (labels[1], original), (labels[2], inpainted), *methods]
    batches = []
    for label, images in rows:
        batch = _image_batch(images)
        if batch.shape[:3] != missing.shape:
            raise ValueError(
                f"the {label!r} images have shape {np.shape(images)}; expected that of the"
                f" originals, {shape}"
            )
        batches.append(np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch)
    batches[1] = np.where(missing[..., None], np.array(to_rgb(missing_colour)), batches[1])
    rows[1] = (f"{labels[1]}\n(missing: {missing_colour})", None)
    columns = len(missing)
    mosaics = [_mosaic(batch, columns, pad=max(1, batch.shape[1] // 14)) for batch in batches]
    label_width, title_height = 1.3, 0.4 if title else 0.1
    image_width = float(np.clip(0.8 * columns, 3.0, 12.0))
    row_height = image_width * mosaics[0].shape[0] / mosaics[0].shape[1]
    width, height = label_width + image_width, len(rows) * row_height + title_height
    figure = _figure(width, height, layout=None)
    for i, ((label, _), mosaic) in enumerate(zip(rows, mosaics, strict=True)):
        bottom = (height - title_height - (i + 1) * row_height) / height
        axes = figure.add_axes(
            (label_width / width, bottom, image_width / width, row_height / height)
        )
        axes.imshow(mosaic, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        figure.suptitle(title, y=1 - 0.05 / height, va="top")
    return _save(figure, path)


# --- simulation-based inference ------------------------------------------------------------

SIGMA_MASSES = tuple(1 - math.exp(-(k**2) / 2) for k in (1, 2, 3))  # 2-D: 39.3%, 86.5%, 98.9%


def sbc_band(
    n_simulations: int, n_posterior_samples: int, bins: int = 20, level: float = 0.99
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counts expected per rank-histogram bin under uniform SBC ranks, and the central
    ``level`` interval of each bin's count, :math:`\\mathrm{Binomial}(N, p_b)` (Talts et al.
    2018, figure 1's grey band): three ``(bins,)`` arrays ``(expected, low, high)``. The bins
    are those of :func:`flowforge.calibration.rank_bins`."""
    from scipy import stats

    from .calibration import rank_bins

    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    _, probability = rank_bins(n_posterior_samples, bins)
    p = probability.numpy()
    tail = (1 - level) / 2
    low = stats.binom.ppf(tail, n_simulations, p)
    high = stats.binom.ppf(1 - tail, n_simulations, p)
    return n_simulations * p, low, high


def plot_sbc(
    ranks: ArrayLike,
    n_posterior_samples: int,
    path: str | os.PathLike,
    names: Sequence[str] | None = None,
    bins: int = 20,
    level: float = 0.99,
    title: str | None = None,
) -> Path:
    """Simulation-based calibration: a histogram of the ranks of each parameter.

    ``ranks`` ``(N, theta_dim)`` are integers in ``0..L`` (``L`` = ``n_posterior_samples``;
    see :func:`flowforge.calibration.sbc_ranks`), grouped into ``bins`` bins. The grey band is
    the ``level`` interval of each bin's count under uniform ranks (:func:`sbc_band`), the
    dashed line its expectation; about ``(1 - level) * bins`` bars per panel fall outside it
    by chance. Each panel is titled with the parameter's name (``names``, default
    :math:`\\theta_j`) and the chi-square p-value of
    :func:`flowforge.calibration.sbc_uniformity`. A U shape means an over-confident
    posterior, a hump an under-confident one, a slope a biased one.
    """
    from .calibration import rank_bins, sbc_uniformity

    values = torch.as_tensor(ranks)
    values = values.unsqueeze(1) if values.dim() == 1 else values
    test = sbc_uniformity(values, n_posterior_samples, bins)
    count, dim = values.shape
    names = [rf"$\theta_{j + 1}$" for j in range(dim)] if names is None else list(names)
    if len(names) != dim:
        raise ValueError(f"names must name the {dim} parameters, got {len(names)} names")
    expected, low, high = sbc_band(count, n_posterior_samples, bins, level)
    index, _ = rank_bins(n_posterior_samples, bins)
    index = index.numpy()
    first = np.array([np.flatnonzero(index == b)[0] for b in range(bins)], dtype=float)
    edges = np.append(first, n_posterior_samples + 1) - 0.5  # bin b: ranks [first_b, first_b+1)
    columns = min(dim, MAX_COLUMNS)
    rows = math.ceil(dim / columns)
    figure = _figure(3.6 * columns, 3.0 * rows + 0.4)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for j, axes in enumerate(panels[:dim]):
        counts = test.counts[j].numpy()
        outside = (counts < low) | (counts > high)
        colours = np.where(outside, "tab:red", "tab:blue")
        axes.bar(
            edges[:-1],
            counts,
            width=np.diff(edges),
            align="edge",
            color=colours,
            alpha=0.55,
            edgecolor="white",
            linewidth=0.5,
        )
        axes.fill_between(
            edges,
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color="0.5",
            alpha=0.3,
            linewidth=0,
            zorder=3,
            label=f"{100 * level:g}% band if uniform",
        )
        axes.stairs(expected, edges, color="0.3", linestyle="--", linewidth=1, zorder=4)
        axes.set_xlim(edges[0], edges[-1])
        axes.set_ylim(0, 1.3 * max(counts.max(), high.max()))
        axes.set_xlabel(f"rank among {n_posterior_samples} posterior draws")
        axes.set_ylabel("simulations")
        axes.set_title(f"{names[j]}: chi-square p = {test.p_value[j].item():.3g}", fontsize=10)
        if j == 0:
            axes.legend(fontsize=8, loc="upper right")
    for axes in panels[dim:]:
        axes.set_visible(False)
    figure.suptitle(title or f"Simulation-based calibration ({count} simulations)")
    return _save(figure, path)


def _hpd_levels(weights: np.ndarray, masses: Sequence[float]) -> list[float]:
    """The weights ``w`` at which the cells with weight ``>= w`` hold each of ``masses``
    (highest-posterior-density regions), in increasing order."""
    ordered = np.sort(weights.ravel())[::-1]
    cumulative = np.cumsum(ordered) / ordered.sum()
    levels = [ordered[min(np.searchsorted(cumulative, mass), len(ordered) - 1)] for mass in masses]
    return sorted(set(float(v) for v in levels))


def _ellipse(mean: np.ndarray, cov: np.ndarray, k: float, points: int = 200) -> np.ndarray:
    """The ``k``-sigma ellipse :math:`\\{\\mu + k L (\\cos t, \\sin t)\\}`, :math:`LL^\\top =
    \\Sigma`: ``(points, 2)``."""
    t = np.linspace(0, 2 * np.pi, points)
    return mean + k * np.stack([np.cos(t), np.sin(t)], axis=1) @ np.linalg.cholesky(cov).T


def _panel_bounds(parts: Sequence[np.ndarray]) -> Bounds:
    """Square, padded limits covering the 0.5%-99.5% quantiles of each ``(N, 2)`` part."""
    low = np.min([[_limits(p[:, i], 0.0)[0] for i in range(2)] for p in parts], axis=0)
    high = np.max([[_limits(p[:, i], 0.0)[1] for i in range(2)] for p in parts], axis=0)
    pad = 0.08 * np.maximum(high - low, 1e-6)
    return _square(((low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1])))


def plot_posteriors(
    samples: ArrayLike,
    path: str | os.PathLike,
    *,
    grid: tuple[ArrayLike, ArrayLike] | None = None,
    gaussian: tuple[ArrayLike, ArrayLike] | None = None,
    truths: ArrayLike | None = None,
    titles: Sequence[str] | None = None,
    names: Sequence[str] = (r"$\theta_1$", r"$\theta_2$"),
    n: int = 2000,
    title: str | None = None,
) -> Path:
    """Samples of an approximate posterior over two parameters against the true posterior,
    one panel per observation.

    ``samples`` ``(m, N, 2)`` are draws of :math:`q(\\theta \\mid x_i)` for ``m``
    observations (``flow.sample(N, context=x)``; at most ``n`` are shown). The true posterior
    is drawn as its regions of highest density holding 39%, 86% and 99% of its mass (what the
    1, 2 and 3-sigma ellipses of a 2-D Gaussian hold), given either

    - ``grid``: ``(points (R*R, 2), weights (m, R*R))``, cell centres with :math:`\\theta_1`
      varying fastest and normalised weights (as from
      :meth:`flowforge.simulators.TwoMoons.posterior_grid`), shaded from light (99%) to
      dark (39%), or
    - ``gaussian``: ``(mean (m, 2), cov (m, 2, 2) or (2, 2))``, drawn as the 1/2/3-sigma
      ellipses (e.g. :meth:`flowforge.simulators.LinearGaussian.posterior`).

    ``truths`` ``(m, 2)`` marks the parameters that generated each observation. Each panel
    has its own square limits, covering both the samples and the true posterior.
    """
    draws = _numpy(samples)
    if draws.ndim != 3 or draws.shape[2] != 2 or draws.shape[0] == 0:
        raise ValueError(f"samples must have shape (m, N, 2), got {draws.shape}")
    m = draws.shape[0]
    if grid is not None and gaussian is not None:
        raise ValueError("give the true posterior as grid or gaussian, not both")
    references: list[np.ndarray] = []
    if grid is not None:
        points, weights = _numpy(grid[0]), _numpy(grid[1]).reshape(m, -1)
        resolution = math.isqrt(len(points))
        xs, ys = points[:resolution, 0], points[::resolution, 1]
        for w in weights:  # the 99.9% HPD region's cells, for the limits
            references.append(points[w >= _hpd_levels(w, [0.999])[0]])
    if gaussian is not None:
        means = _numpy(gaussian[0]).reshape(m, 2)
        covs = np.broadcast_to(_numpy(gaussian[1]), (m, 2, 2))
        references = [_ellipse(means[i], covs[i], 3.5) for i in range(m)]
    titles = [f"observation {i + 1}" for i in range(m)] if titles is None else list(titles)
    marks = None if truths is None else _numpy(truths).reshape(m, 2)
    columns = min(m, MAX_COLUMNS)
    rows = math.ceil(m / columns)
    figure = _figure(3.4 * columns, 3.5 * rows + 0.5)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for i, axes in enumerate(panels[:m]):
        shown = _subsample(draws[i], n, seed=i)
        parts = [shown] + ([references[i]] if references else [])
        bounds = _panel_bounds(parts)
        _scatter(axes, shown, color="tab:blue", alpha=0.4, label="flow samples")
        label = "true posterior: 39/86/99% regions"
        if grid is not None:
            (x0, x1), (y0, y1) = bounds
            keep_x = (xs >= x0) & (xs <= x1)
            keep_y = (ys >= y0) & (ys <= y1)
            density = weights[i].reshape(resolution, resolution)
            levels = _hpd_levels(weights[i], SIGMA_MASSES[::-1])
            if keep_x.sum() >= 2 and keep_y.sum() >= 2:
                crop = density[np.ix_(keep_y, keep_x)]
                grid_x, grid_y = xs[keep_x], ys[keep_y]
                shades = ["0.88", "0.75", "0.6"][-len(levels) :]
                axes.contourf(
                    grid_x, grid_y, crop, levels=[*levels, np.inf], colors=shades, zorder=0
                )
                axes.contour(grid_x, grid_y, crop, levels=levels[:1], colors="0.3", linewidths=0.6)
            axes.fill_between([], [], color="0.75", label=label)
        if gaussian is not None:
            for k in (1, 2, 3):
                curve = _ellipse(means[i], covs[i], k)
                axes.plot(
                    curve[:, 0],
                    curve[:, 1],
                    color="k",
                    linewidth=0.9,
                    label=label if k == 1 else None,
                )
        if marks is not None:
            axes.plot(
                *marks[i],
                marker="*",
                color="tab:red",
                markersize=11,
                linestyle="none",
                label="true parameters",
            )
        _frame(axes, bounds, titles[i])
        axes.set_xlabel(names[0])
        axes.set_ylabel(names[1])
        if i == 0:
            axes.legend(fontsize=7, loc="upper left")
    for axes in panels[m:]:
        axes.set_visible(False)
    figure.suptitle(title or "Approximate posterior samples against the true posterior")
    return _save(figure, path)
