"""Figures of an amortized posterior: simulation-based calibration and posteriors against the
truth."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowforge.plots.common import (
    MAX_COLUMNS,
    ArrayLike,
    Bounds,
    _figure,
    _frame,
    _limits,
    _numpy,
    _save,
    _scatter,
    _square,
    _subsample,
)

SIGMA_MASSES = tuple(1 - math.exp(-(k**2) / 2) for k in (1, 2, 3))  # 2-D: 39.3%, 86.5%, 98.9%


def sbc_band(
    n_simulations: int, n_posterior_samples: int, bins: int = 20, level: float = 0.99
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counts expected per rank-histogram bin under uniform SBC ranks, and the central
    ``level`` interval of each bin's count, $\\mathrm{Binomial}(N, p_b)$ (Talts et al.
    2018, figure 1's grey band): three ``(bins,)`` arrays ``(expected, low, high)``. The bins
    are those of `flowforge.inference.calibration.rank_bins()`."""
    from scipy import stats

    from flowforge.inference.calibration import rank_bins

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
    see `flowforge.inference.calibration.sbc_ranks()`), grouped into ``bins`` bins. The grey band is
    the ``level`` interval of each bin's count under uniform ranks (`sbc_band()`), the
    dashed line its expectation; about ``(1 - level) * bins`` bars per panel fall outside it
    by chance. Each panel is titled with the parameter's name (``names``, default
    $\\theta_j$) and the chi-square p-value of
    `flowforge.inference.calibration.sbc_uniformity()`. A U shape means an over-confident
    posterior, a hump an under-confident one, a slope a biased one.
    """
    from flowforge.inference.calibration import rank_bins, sbc_uniformity

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
    """The ``k``-sigma ellipse $\\{\\mu + k L (\\cos t, \\sin t)\\}$, $LL^\\top =
    \\Sigma$: ``(points, 2)``."""
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

    ``samples`` ``(N, m, 2)`` are draws of $q(\\theta \\mid x_i)$ for ``m``
    observations (``flow.sample(N, context=x)``; at most ``n`` are shown). The true posterior
    is drawn as its regions of highest density holding 39%, 86% and 99% of its mass (what the
    1, 2 and 3-sigma ellipses of a 2-D Gaussian hold), given either

    - ``grid``: ``(points (R*R, 2), weights (m, R*R))``, cell centres with $\\theta_1$
      varying fastest and normalised weights (as from
      `flowforge.inference.simulators.TwoMoons.posterior_grid()`), shaded from light (99%) to
      dark (39%), or
    - ``gaussian``: ``(mean (m, 2), cov (m, 2, 2) or (2, 2))``, drawn as the 1/2/3-sigma
      ellipses (e.g. `flowforge.inference.simulators.LinearGaussian.posterior()`).

    ``truths`` ``(m, 2)`` marks the parameters that generated each observation. Each panel
    has its own square limits, covering both the samples and the true posterior.
    """
    draws = _numpy(samples)
    if draws.ndim != 3 or draws.shape[2] != 2 or draws.shape[1] == 0:
        raise ValueError(f"samples must have shape (N, m, 2), got {draws.shape}")
    draws = draws.transpose(1, 0, 2)  # (m, N, 2): a panel per observation
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
