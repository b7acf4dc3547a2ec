r"""2-D toy distributions whose density, and so whose differential entropy, is known.

Each toy is a generative process with a density $p(x)$ that can be evaluated to
quadrature precision, so that a model's test NLL minus $H(p)$ estimates
$KL(p \| q)$. Most toys are a distribution over a curve plus isotropic Gaussian noise:

$$
x = c_k(t) + \sigma\epsilon,\quad k \sim w,\ t \sim p_k,\ \epsilon \sim \mathcal N(0, I_2),
\qquad
p(x) = \sum_k w_k \int p_k(t)\, \mathcal N(x; c_k(t), \sigma^2 I_2)\, dt,
$$

with the integral done by composite Gauss-Legendre quadrature (8 nodes per panel, panels of
arc length $\sigma$ along the curve). Doubling the panels changes $\log p$ by
< 1e-12 wherever $\log p > -20$, < 1e-8 where $\log p > -50$, and by at most
~4e-4 in the far tails ($\log p < -100$). Mixtures of Gaussians, rings and the
checkerboard have closed forms.

Every toy has ``sample(n, generator) -> (n, 2)`` float32 and ``log_prob(x)``: ``(N, 2)``
float32 or float64 ``-> (N,)`` in the input's dtype, computed in float64.

The toys (parameters in each constant's docstring; $H$ in nats):

==============  ======================================================  ========
name            process                                                 H
==============  ======================================================  ========
two-moons       2 half circles, t ~ U(0, pi), sigma 0.1                 1.007585
8gaussians      8 Gaussians, std 0.354, on a circle of radius 2.83      2.831578
checkerboard    uniform on 8 unit squares of [-2, 2]^2                  log 8
pinwheel        5 arms, radius ~ N(2, 0.6^2) on [0, 4], sigma 0.2       2.591952
rings           4 circles, radii 0.75 to 3, uniform angle, sigma 0.08   2.623183
2spirals        2 spirals of 1.5 turns, p(t) ~ t, sigma 0.1             2.540618
swissroll       1 spiral, t ~ U(1.5 pi, 4.5 pi), sigma 0.2              2.669646
two-gaussians   N((-2,-2), I) and N((2,2), I), weights 1/2              3.524413
==============  ======================================================  ========

Entropies $H(p) = -\int p \log p$ are stored in `ENTROPY`: 2-D grid quadrature
(`grid_entropy()`, converged to ~1e-11), each confirmed by a Monte Carlo estimate
$-\frac1n\sum \log p(x_i)$ over 250,000 samples of the process (`entropy()`,
standard error <= 0.0021, stored in `ENTROPY_MC`); the checkerboard's is
$\log 8$ exactly. Recompute and print them with ``python -m flowforge.datasets.toys``.
"""

from __future__ import annotations

import argparse
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowforge.datasets.base import Dataset, split_three

Curve = Callable[[Tensor], Tensor]
"""A curve $t \\mapsto c(t)$: ``(T,) -> (T, 2)``, float64."""

_CHUNK = 1 << 22  # (points x quadrature nodes) per block of the density computation
_GAUSS_NODES = 8  # Gauss-Legendre nodes per panel


def _check_points(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    return x.to(torch.float64)


def _rand(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=generator, dtype=torch.float64)


def _randn(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn((n, *shape), generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------- parameter laws


class Law(ABC):
    """A distribution over a curve parameter $t \\in [low, high]$."""

    low: float
    high: float

    @abstractmethod
    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF, so that ``icdf(U(0, 1))`` samples the law: ``(n,) -> (n,)``."""

    @abstractmethod
    def log_prob(self, t: Tensor) -> Tensor:
        """Log-density on ``[low, high]``: ``(T,) -> (T,)``."""


@dataclass(frozen=True)
class Uniform(Law):
    r"""$t \sim U(low, high)$, $p(t) = 1/(high - low)$."""

    low: float
    high: float

    def icdf(self, u: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * u

    def log_prob(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -math.log(self.high - self.low))


@dataclass(frozen=True)
class Ramp(Law):
    r"""$p(t) = 2t / T^2$ on $[0, T]$ (so $t = T\sqrt u$)."""

    high: float
    low: float = 0.0

    def icdf(self, u: Tensor) -> Tensor:
        return self.high * u.sqrt()

    def log_prob(self, t: Tensor) -> Tensor:
        return torch.log(2 * t) - 2 * math.log(self.high)


@dataclass(frozen=True)
class TruncatedNormal(Law):
    r"""$\mathcal N(\mu, s^2)$ restricted to $[low, high]$:
    $p(t) = \varphi((t - \mu)/s) / (s Z)$,
    $Z = \Phi((high - \mu)/s) - \Phi((low - \mu)/s)$."""

    mean: float
    std: float
    low: float
    high: float

    def _cdf_bounds(self) -> tuple[float, float]:
        r"""$\Phi$ at the standardised bounds (``erfc`` keeps the lower tail exact)."""
        return tuple(
            0.5 * math.erfc((self.mean - bound) / (self.std * math.sqrt(2)))
            for bound in (self.low, self.high)
        )

    def icdf(self, u: Tensor) -> Tensor:
        lo, hi = self._cdf_bounds()
        return self.mean + self.std * torch.special.ndtri(lo + (hi - lo) * u)

    def log_prob(self, t: Tensor) -> Tensor:
        lo, hi = self._cdf_bounds()
        z = (t - self.mean) / self.std
        return -0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(self.std * (hi - lo))


# ---------------------------------------------------------------------------- toys


class Toy(ABC):
    """A 2-D distribution with a sampler and an exact (to quadrature) log-density.

    ``box = (x0, x1, y0, y1)`` holds all its mass but a fraction below 1e-12 and ``scale`` is
    its finest length scale (the noise); both set the grid of `grid_entropy()`.
    """

    name: str
    description: str
    box: tuple[float, float, float, float]
    scale: float

    @abstractmethod
    def sample64(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the process in float64: ``(n, 2)``."""

    @abstractmethod
    def log_prob64(self, x: Tensor) -> Tensor:
        """``log p(x)`` for float64 ``x``: ``(N, 2) -> (N,)``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples, ``(n, 2)`` float32 (drawn in float64, then rounded)."""
        return self.sample64(n, generator).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats: ``(N, 2) -> (N,)``, computed in float64, returned in the
        dtype of ``x``."""
        return self.log_prob64(_check_points(x)).to(x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True)
class Arc:
    """One component of a `CurveMixture`: weight, curve, and law of the parameter."""

    weight: float
    curve: Curve
    law: Law


class CurveMixture(Toy):
    r"""Mass spread along curves, blurred by isotropic Gaussian noise of std ``sigma``.

    $$
    p(x) = \sum_k w_k \int_{a_k}^{b_k} p_k(t)\,
    \frac{1}{2\pi\sigma^2} e^{-\|x - c_k(t)\|^2 / 2\sigma^2}\, dt
    $$

    The integral is a sum over quadrature nodes $t_j$ with weights $\omega_j$:
    each $[a_k, b_k]$ is cut into panels of equal arc length at most
    ``panel * sigma / refine`` and each panel gets 8 Gauss-Legendre nodes, so

    $$
    \log p(x) = -\log 2\pi\sigma^2 + \operatorname{logsumexp}_j
    \big(\log w_{k_j} \omega_j p_{k_j}(t_j) - \|x - c_{k_j}(t_j)\|^2/2\sigma^2\big).
    $$

    """

    def __init__(
        self,
        name: str,
        description: str,
        arcs: Sequence[Arc],
        sigma: float,
        box: tuple[float, float, float, float],
        panel: float = 1.0,
    ) -> None:
        total = sum(arc.weight for arc in arcs)
        self.name, self.description, self.box = name, description, box
        self.arcs = [Arc(arc.weight / total, arc.curve, arc.law) for arc in arcs]
        self.sigma = self.scale = sigma
        self.panel = panel
        self._nodes: dict[int, tuple[Tensor, Tensor]] = {}

    def nodes(self, refine: int = 1) -> tuple[Tensor, Tensor]:
        """Quadrature nodes on the curves ``(T, 2)`` and their log-weights ``(T,)``, which
        sum (in probability) to 1 up to quadrature error."""
        if refine not in self._nodes:
            gauss_t, gauss_w = np.polynomial.legendre.leggauss(_GAUSS_NODES)
            gauss_t, gauss_w = torch.from_numpy(gauss_t), torch.from_numpy(gauss_w)
            points, log_weights = [], []
            for arc in self.arcs:
                edges = self._panel_edges(arc, self.panel * self.sigma / refine)
                half = (edges[1:] - edges[:-1]).unsqueeze(1) / 2
                t = ((edges[1:] + edges[:-1]).unsqueeze(1) / 2 + half * gauss_t).reshape(-1)
                points.append(arc.curve(t))
                log_w = torch.log(half * gauss_w).reshape(-1) + arc.law.log_prob(t)
                log_weights.append(log_w + math.log(arc.weight))
            self._nodes[refine] = torch.cat(points), torch.cat(log_weights)
        return self._nodes[refine]

    @staticmethod
    def _panel_edges(arc: Arc, length: float) -> Tensor:
        """Edges in ``t`` of panels of (nearly) equal arc length, at most ``length`` each."""
        t = torch.linspace(arc.law.low, arc.law.high, 20_001, dtype=torch.float64)
        steps = torch.linalg.vector_norm(arc.curve(t).diff(dim=0), dim=1)
        arc_length = torch.cat([torch.zeros(1, dtype=torch.float64), steps.cumsum(0)])
        count = max(1, math.ceil(arc_length[-1].item() / length))
        targets = np.linspace(0.0, arc_length[-1].item(), count + 1)
        edges = torch.from_numpy(np.interp(targets, arc_length.numpy(), t.numpy()))
        edges[0], edges[-1] = arc.law.low, arc.law.high
        return edges

    def log_prob64(self, x: Tensor, refine: int = 1) -> Tensor:
        # -|x - c_j|^2 / 2s^2 = -|x|^2 / 2s^2 + (x . c_j) / s^2 - |c_j|^2 / 2s^2: one matmul
        # per block for the last two terms, the first taken out of the logsumexp.
        points, log_w = (v.to(x.device) for v in self.nodes(refine))
        inv_var = 1 / self.sigma**2
        bias = log_w - 0.5 * inv_var * (points * points).sum(1)
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        rows = max(1, _CHUNK // points.shape[0])
        for start in range(0, x.shape[0], rows):
            block = x[start : start + rows]
            exponent = torch.addmm(bias, block, points.T, alpha=inv_var)
            out[start : start + rows] = torch.logsumexp(exponent, dim=1)
        return out - 0.5 * inv_var * (x * x).sum(1) - math.log(2 * math.pi * self.sigma**2)

    def sample64(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        which = _rand(n, generator)
        u = _rand(n, generator)
        noise = _randn(n, generator, 2)
        edges = torch.tensor([arc.weight for arc in self.arcs], dtype=torch.float64).cumsum(0)
        index = torch.searchsorted(edges[:-1], which, right=True)
        x = torch.empty(n, 2, dtype=torch.float64)
        for k, arc in enumerate(self.arcs):
            chosen = index == k
            x[chosen] = arc.curve(arc.law.icdf(u[chosen]))
        return x + self.sigma * noise


class GaussianMixture(Toy):
    r"""Equal-weight mixture of isotropic Gaussians:
    $p(x) = \frac1K \sum_k \mathcal N(x; \mu_k, s^2 I_2)$ (closed form)."""

    def __init__(
        self,
        name: str,
        description: str,
        means: Sequence[tuple[float, float]],
        std: float,
        box: tuple[float, float, float, float],
    ) -> None:
        self.name, self.description, self.box = name, description, box
        self.means = torch.tensor(means, dtype=torch.float64)
        self.std = self.scale = std

    def log_prob64(self, x: Tensor) -> Tensor:
        sq_dist = ((x.unsqueeze(1) - self.means.to(x.device)) ** 2).sum(-1)
        log_k = math.log(len(self.means))
        normal = math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(-sq_dist / (2 * self.std**2), dim=1) - log_k - normal

    def sample64(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        which = _rand(n, generator)
        noise = _randn(n, generator, 2)
        index = (which * len(self.means)).long().clamp_(max=len(self.means) - 1)
        return self.means[index] + self.std * noise


class Rings(Toy):
    r"""Concentric circles of radii $r_k$, equal weights, uniform angle, noise
    $\sigma$. Averaging the Gaussian over the angle gives a Bessel function, so with
    $\rho = \|x\|$:

    $$
    p(x) = \frac1K \sum_k \frac{1}{2\pi\sigma^2}
    e^{-(\rho - r_k)^2 / 2\sigma^2}\, \tilde I_0(\rho r_k / \sigma^2),
    $$

    where $\tilde I_0(z) = e^{-z} I_0(z)$ (closed form, no quadrature).
    """

    def __init__(
        self,
        name: str,
        description: str,
        radii: Sequence[float],
        sigma: float,
        box: tuple[float, float, float, float],
    ) -> None:
        self.name, self.description, self.box = name, description, box
        self.radii = torch.tensor(radii, dtype=torch.float64)
        self.sigma = self.scale = sigma

    def log_prob64(self, x: Tensor) -> Tensor:
        rho = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        radii = self.radii.to(x.device)
        s2 = self.sigma**2
        log_each = -((rho - radii) ** 2) / (2 * s2) + torch.log(torch.special.i0e(rho * radii / s2))
        return torch.logsumexp(log_each, dim=1) - math.log(len(radii) * 2 * math.pi * s2)

    def sample64(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        which = _rand(n, generator)
        angle = 2 * math.pi * _rand(n, generator)
        noise = _randn(n, generator, 2)
        index = (which * len(self.radii)).long().clamp_(max=len(self.radii) - 1)
        circle = torch.stack([angle.cos(), angle.sin()], dim=1)
        return self.radii[index, None] * circle + self.sigma * noise


class Checkerboard(Toy):
    r"""Uniform on the 8 unit squares $[i, i+1) \times [j, j+1)$ of
    $[-2, 2]^2$ with $i + j$ even: $p = 1/8$ there, so $H = \log 8$.

    ``log_prob`` is $-\log 8$ on the closure of those squares (every grid line inside
    the box borders a filled square) and $-\infty$ elsewhere, so float32 rounding of a
    sample can never move it off the support.
    """

    name = "checkerboard"
    description = "uniform on 8 of the 16 unit squares of [-2, 2]^2 (checkerboard)"
    box = (-2.0, 2.0, -2.0, 2.0)
    scale = 0.125

    def log_prob64(self, x: Tensor) -> Tensor:
        inside = ((x >= -2) & (x <= 2)).all(dim=1)
        cell = torch.floor(x)
        filled = (cell.sum(1) % 2 == 0) | (x == cell).any(dim=1)
        value = torch.full_like(x[:, 0], -math.log(8))
        return value.masked_fill_(~(inside & filled), -math.inf)

    def sample64(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        which = _rand(n, generator)
        offset = _rand(n, generator, 2)
        index = (which * 8).long().clamp_(max=7)
        row = index // 2  # j in 0..3
        column = 2 * (index % 2) + row % 2  # i with i + j even
        return torch.stack([column, row], dim=1).to(torch.float64) - 2 + offset


# ---------------------------------------------------------------------------- the toys


def _half_circle_outer(t: Tensor) -> Tensor:
    return torch.stack([t.cos(), t.sin()], dim=1)


def _half_circle_inner(t: Tensor) -> Tensor:
    return torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)


def _pinwheel_arm(k: int) -> Curve:
    def arm(r: Tensor) -> Tensor:
        angle = 2 * math.pi * k / 5 + 0.25 * torch.exp(r / 2)
        return r.unsqueeze(1) * torch.stack([angle.cos(), angle.sin()], dim=1)

    return arm


def _spiral(sign: float) -> Curve:
    def spiral(t: Tensor) -> Tensor:
        return (sign / 3) * torch.stack([-t * t.cos(), t * t.sin()], dim=1)

    return spiral


def _swissroll(t: Tensor) -> Tensor:
    return torch.stack([t * t.cos(), t * t.sin()], dim=1) / 5


_PINWHEEL_RADIUS = TruncatedNormal(mean=2.0, std=0.6, low=0.0, high=4.0)

TWO_MOONS = CurveMixture(
    "two-moons",
    "two interleaved half circles (scikit-learn's moons), noise 0.1",
    [
        Arc(0.5, _half_circle_outer, Uniform(0.0, math.pi)),
        Arc(0.5, _half_circle_inner, Uniform(0.0, math.pi)),
    ],
    sigma=0.1,
    box=(-2.2, 3.2, -1.7, 2.2),
)
"""Two moons: $c_1(t) = (\\cos t, \\sin t)$, $c_2(t) = (1 - \\cos t,
\\tfrac12 - \\sin t)$, $t \\sim U(0, \\pi)$, weights 1/2, $\\sigma = 0.1$."""

EIGHT_GAUSSIANS = GaussianMixture(
    "8gaussians",
    "8 Gaussians (std 0.354) evenly on a circle of radius 2.83 (FFJORD)",
    [
        (2 * math.sqrt(2) * math.cos(math.pi * k / 4), 2 * math.sqrt(2) * math.sin(math.pi * k / 4))
        for k in range(8)
    ],
    std=0.5 / math.sqrt(2),
    box=(-7.0, 7.0, -7.0, 7.0),
)
"""FFJORD's 8 Gaussians: means $2\\sqrt2(\\cos\\frac{\\pi k}4, \\sin\\frac{\\pi k}4)$,
$k = 0..7$, std $0.5/\\sqrt2 \\approx 0.354$, equal weights."""

CHECKERBOARD = Checkerboard()

PINWHEEL = CurveMixture(
    "pinwheel",
    "5 curved arms, radius ~ N(2, 0.6^2) on [0, 4], noise 0.2",
    [Arc(1.0, _pinwheel_arm(k), _PINWHEEL_RADIUS) for k in range(5)],
    sigma=0.2,
    box=(-6.5, 6.5, -6.5, 6.5),
)
"""Pinwheel: 5 arms $c_k(r) = r(\\cos\\theta_k(r), \\sin\\theta_k(r))$,
$\\theta_k(r) = 2\\pi k/5 + \\tfrac14 e^{r/2}$, radius $r \\sim \\mathcal N(2,
0.6^2)$ truncated to $[0, 4]$, $\\sigma = 0.2$, equal weights. This follows the
usual pinwheel (radius $2\\,\\mathcal N(1, 0.3^2)$, angle $+\\tfrac14 e^{r/2}$,
tangential noise 0.2) with isotropic noise instead, so that the density is an integral over
the arms."""

RINGS = Rings(
    "rings",
    "4 concentric circles, radii 0.75, 1.5, 2.25, 3, noise 0.08",
    radii=(0.75, 1.5, 2.25, 3.0),
    sigma=0.08,
    box=(-4.0, 4.0, -4.0, 4.0),
)
"""Rings (FFJORD's): radii 0.75, 1.5, 2.25, 3, equal weights, uniform angle,
$\\sigma = 0.08$."""

TWO_SPIRALS = CurveMixture(
    "2spirals",
    "two interleaved spirals of 1.5 turns, noise 0.1",
    [Arc(0.5, _spiral(1.0), Ramp(3 * math.pi)), Arc(0.5, _spiral(-1.0), Ramp(3 * math.pi))],
    sigma=0.1,
    box=(-4.5, 4.5, -4.5, 4.5),
)
"""Two spirals: $c_\\pm(t) = \\pm\\tfrac13(-t\\cos t, t\\sin t)$,
$t \\in [0, 3\\pi]$ with $p(t) = 2t/(3\\pi)^2$ (FFJORD's
$t = 3\\pi\\sqrt u$; nearly uniform in arc length, whose rate is
$\\sqrt{1 + t^2}/3$), weights 1/2, $\\sigma = 0.1$."""

SWISSROLL = CurveMixture(
    "swissroll",
    "one spiral (the swiss roll seen from above), noise 0.2",
    [Arc(1.0, _swissroll, Uniform(1.5 * math.pi, 4.5 * math.pi))],
    sigma=0.2,
    box=(-5.0, 5.0, -5.0, 5.0),
)
"""Swiss roll (scikit-learn's, seen from above, divided by 5 as in FFJORD):
$c(t) = (t\\cos t, t\\sin t)/5$, $t \\sim U(1.5\\pi, 4.5\\pi)$,
$\\sigma = 0.2$."""

TWO_GAUSSIANS = GaussianMixture(
    "two-gaussians",
    "two unit Gaussians at (-2, -2) and (2, 2), equal weights (Real NVP)",
    [(-2.0, -2.0), (2.0, 2.0)],
    std=1.0,
    box=(-12.0, 12.0, -12.0, 12.0),
)
"""The Real NVP article's mixture $\\tfrac12\\mathcal N((-2,-2), I) +
\\tfrac12\\mathcal N((2,2), I)$."""

TOYS: dict[str, Toy] = {
    toy.name: toy
    for toy in (
        TWO_MOONS,
        EIGHT_GAUSSIANS,
        CHECKERBOARD,
        PINWHEEL,
        RINGS,
        TWO_SPIRALS,
        SWISSROLL,
        TWO_GAUSSIANS,
    )
}
"""Every toy by name."""

# H(p) in nats, from ``python -m flowforge.datasets.toys`` (defaults: --n 250000 --seed 0):
# 2-D grid quadrature of -∫ p log p (grid_entropy: midpoint rule over the toy's box, step =
# noise std / 4; halving the step changes every value by < 3e-11, and the grid mass is 1 to
# 12 digits); checkerboard: log 8 exactly. Each agrees with the Monte Carlo estimate
# -mean log p over 250,000 samples of the process (ENTROPY_MC, s.e. 0.0014 to 0.0021 nats)
# within 1.9 standard errors.
ENTROPY: dict[str, float] = {
    "two-moons": 1.007584835,
    "8gaussians": 2.831578361,
    "checkerboard": math.log(8),
    "pinwheel": 2.591951720,
    "rings": 2.623182770,
    "2spirals": 2.540617894,
    "swissroll": 2.669646174,
    "two-gaussians": 3.524412886,
}

# Monte Carlo entropy(name, 250_000, seed=i) for the i-th toy: (estimate, standard error).
ENTROPY_MC: dict[str, tuple[float, float]] = {
    "two-moons": (1.00514, 0.00149),
    "8gaussians": (2.83098, 0.00195),
    "checkerboard": (2.07944, 0.0),
    "pinwheel": (2.59114, 0.00204),
    "rings": (2.62330, 0.00176),
    "2spirals": (2.54130, 0.00144),
    "swissroll": (2.66984, 0.00154),
    "two-gaussians": (3.52088, 0.00195),
}


# ---------------------------------------------------------------------------- entropy


def _toy(name: str) -> Toy:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; expected one of {', '.join(TOYS)}")
    return TOYS[name]


def entropy(name: str, n: int = 250_000, seed: int = 0) -> tuple[float, float]:
    r"""Monte Carlo differential entropy $H(p) = -E_p[\log p(x)]$ in nats, from ``n``
    samples of the process and the quadrature log-density: ``(estimate, standard error)``,
    the standard error being $\mathrm{std}(\log p)/\sqrt n$."""
    toy = _toy(name)
    generator = torch.Generator().manual_seed(seed)
    log_p = torch.cat(
        [toy.log_prob64(toy.sample64(min(50_000, n - i), generator)) for i in range(0, n, 50_000)]
    )
    return -log_p.mean().item(), (log_p.std() / math.sqrt(n)).item()


def grid_entropy(name: str, step: float | None = None) -> tuple[float, float]:
    r"""Grid quadrature $-\sum p \log p\, h^2$ over the toy's ``box`` at the cell
    midpoints, step ``h`` (default: a quarter of the noise std), and the mass
    $\sum p\, h^2$: ``(entropy, mass)``. The integrand is smooth and decays to 0 at the
    box edges (except for the checkerboard, whose squares the grid fits exactly), so the
    midpoint rule converges faster than any power of ``h``."""
    toy = _toy(name)
    h = toy.scale / 4 if step is None else step
    x0, x1, y0, y1 = toy.box
    nx, ny = round((x1 - x0) / h), round((y1 - y0) / h)
    xs = x0 + (torch.arange(nx, dtype=torch.float64) + 0.5) * (x1 - x0) / nx
    ys = y0 + (torch.arange(ny, dtype=torch.float64) + 0.5) * (y1 - y0) / ny
    cell = (x1 - x0) / nx * (y1 - y0) / ny
    grid = torch.cartesian_prod(xs, ys)
    log_p = torch.cat([toy.log_prob64(part) for part in grid.split(65_536)])
    p = log_p.exp()
    plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    return -(plogp.sum() * cell).item(), (p.sum() * cell).item()


# ---------------------------------------------------------------------------- datasets


def make(name: str, n: int = 20_000, seed: int = 0) -> Dataset:
    """``n`` samples of toy ``name`` drawn with ``seed``, split 80/10/10 by
    `split_three()` with the same seed; with the toy's entropy
    and log-density. The same ``n`` and ``seed`` give the same data."""
    toy = _toy(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"n must be an integer >= 10 (so that no split is empty), got {n!r}")
    x = toy.sample(n, torch.Generator().manual_seed(seed))
    train, val, test = split_three(x, (0.8, 0.1), seed=seed)
    return Dataset(name, train, val, test, entropy=ENTROPY[name], log_prob=toy.log_prob)


def two_moons(n: int = 20_000, seed: int = 0) -> Dataset:
    """The two-moons toy as a `Dataset` (see `TWO_MOONS`)."""
    return make("two-moons", n, seed)


def eight_gaussians(n: int = 20_000, seed: int = 0) -> Dataset:
    """The 8-Gaussians toy as a `Dataset` (see `EIGHT_GAUSSIANS`)."""
    return make("8gaussians", n, seed)


def checkerboard(n: int = 20_000, seed: int = 0) -> Dataset:
    """The checkerboard toy as a `Dataset` (see `Checkerboard`)."""
    return make("checkerboard", n, seed)


def pinwheel(n: int = 20_000, seed: int = 0) -> Dataset:
    """The pinwheel toy as a `Dataset` (see `PINWHEEL`)."""
    return make("pinwheel", n, seed)


def rings(n: int = 20_000, seed: int = 0) -> Dataset:
    """The rings toy as a `Dataset` (see `RINGS`)."""
    return make("rings", n, seed)


def two_spirals(n: int = 20_000, seed: int = 0) -> Dataset:
    """The two-spirals toy as a `Dataset` (see `TWO_SPIRALS`)."""
    return make("2spirals", n, seed)


def swissroll(n: int = 20_000, seed: int = 0) -> Dataset:
    """The swiss-roll toy as a `Dataset` (see `SWISSROLL`)."""
    return make("swissroll", n, seed)


def two_gaussians(n: int = 20_000, seed: int = 0) -> Dataset:
    """The two-Gaussians toy as a `Dataset` (see `TWO_GAUSSIANS`)."""
    return make("two-gaussians", n, seed)


# ---------------------------------------------------------------------------- table


def _quadrature_change(toy: Toy, generator: torch.Generator) -> float | None:
    """Largest change of ``log p`` at 2,000 fresh samples when the curve panels halve."""
    if not isinstance(toy, CurveMixture):
        return None
    x = toy.sample64(2_000, generator)
    return (toy.log_prob64(x, refine=2) - toy.log_prob64(x)).abs().max().item()


def main(argv: Sequence[str] | None = None) -> None:
    """Recompute and print every toy's entropy (Monte Carlo and grid quadrature)."""
    parser = argparse.ArgumentParser(
        prog="python -m flowforge.datasets.toys", description=main.__doc__
    )
    parser.add_argument("--n", type=int, default=250_000, help="Monte Carlo samples per toy")
    parser.add_argument("--seed", type=int, default=0, help="toy i uses seed + i")
    args = parser.parse_args(argv)
    print(
        f"{'toy':14} {'MC H':>9} {'s.e.':>7} {'grid H':>12} {'grid - grid/2':>13} "
        f"{'mass':>14} {'|MC-grid|/se':>12} {'quad':>8} {'time':>6}"
    )
    for i, (name, toy) in enumerate(TOYS.items()):
        start = time.perf_counter()
        mc, se = entropy(name, args.n, args.seed + i)
        grid, mass = grid_entropy(name)
        finer, _ = grid_entropy(name, toy.scale / 8)
        quad = _quadrature_change(toy, torch.Generator().manual_seed(args.seed + 1))
        z = abs(mc - grid) / se if se > 1e-12 else 0.0
        print(
            f"{name:14} {mc:9.5f} {se:7.5f} {grid:12.9f} {grid - finer:13.1e} {mass:14.12f} "
            f"{z:12.2f} {'-' if quad is None else f'{quad:.0e}':>8} "
            f"{time.perf_counter() - start:5.1f}s"
        )
    print(
        "MC H: -mean log p over --n samples (s.e. = std/sqrt(n)); grid H: -sum p log p h^2, "
        "h = noise/4 (grid/2: h/2); mass: sum p h^2; quad: max |change of log p| when the "
        "quadrature panels along the curves halve."
    )


if __name__ == "__main__":
    main()
