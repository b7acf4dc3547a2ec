"""What every figure shares: a standalone Agg figure, the atomic save, points and bounds."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from flowforge.flows.flow import Flow
from flowforge.runtime import atomic

DPI = 150
MAX_POINTS = 5000
PANEL_INCHES = 4.0
MAX_COLUMNS = 5
DENSITY_CHUNK = 8192

Bounds = tuple[tuple[float, float], tuple[float, float]]
ArrayLike = Tensor | np.ndarray


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
