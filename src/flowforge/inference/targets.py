r"""Unnormalised target densities $\tilde p(z) = e^{-U(z)}$ for variational inference.

A `Target` gives $\log\tilde p(z) = -U(z)$ for ``z`` of shape ``(N, dim)``
(any leading batch shape works), computed in the dtype of ``z`` and differentiable in ``z``;
where it is known, $\log Z = \log\int e^{-U(z)}\,dz$ with a bound on its error, and
exact samples of $p = \tilde p / Z$. Get one by name with `get()`:

========  ====================================================  =============================
name      density                                               log Z (defaults)
========  ====================================================  =============================
u1        Rezende & Mohamed's U1: a ring with two modes         1.877502 (quadrature)
u2        their U2, a sine wave, confined along z1              2.287986 (quadrature)
u3        their U3, a wave that splits in two, confined         2.847602 (quadrature)
u4        their U4, a wave with a step, confined                2.916595 (quadrature)
banana    twisted Gaussian (Haario et al. 1999)                 log(2 pi a sigma) = 1.614734
funnel    Neal's funnel: v ~ N(0, s^2), x | v ~ N(0, e^v)       log s + d/2 log 2 pi = 2.936489
gmm       3 well-separated 2-D Gaussians, unequal weights       log 2 pi + log sum w = 1.837877
gaussian  a correlated Gaussian in any dimension                1/2 log det(2 pi Sigma)
========  ====================================================  =============================

The U's are from Rezende & Mohamed, "Variational inference with normalizing flows" (2015),
section 6.1, table 1. Their $\log Z$ comes from `quadrature_log_normalizer()` over a
box that holds all but a proven-negligible part of the mass; `Target.log_normalizer_error()`
adds the discretisation error estimate and that tail bound (together < 2e-12 for each U, so
the printed digits are exact). U2, U3 and U4 do not decay along $z_1$, so each gets a
confining term $c(z_1) = (z_1/5)^{32}$ (see `confinement()`).

The others are normalised densities with their textbook normalising constant left out of
``log_prob`` (so $\log Z$ is a known, non-zero number), with exact samplers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

Bounds = tuple[tuple[float, float], ...]
"""A box: one ``(low, high)`` per coordinate."""

LOG_2PI = math.log(2 * math.pi)
ROUNDING = 1e-12
"""Allowance for floating-point rounding, added to every quadrature error estimate (the
float64 sums below are accurate to ~1e-14 relative)."""

CONFINE_SCALE = 5.0
CONFINE_POWER = 32
_CHUNK = 1 << 18  # grid points per block of quadrature


def _check_points(z: Tensor, dim: int) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}")
    if z.dim() < 1 or z.shape[-1] != dim:
        raise ValueError(f"z must have shape (N, {dim}), got {tuple(z.shape)}")


def _phi_upper(t: float) -> float:
    r"""$P(X > t)$ for $X \sim N(0, 1)$, accurate far into the tail."""
    return 0.5 * math.erfc(t / math.sqrt(2))


def _round_out(low: float, high: float, unit: float = 0.5) -> tuple[float, float]:
    """``(low, high)`` widened to multiples of ``unit``."""
    return math.floor(low / unit) * unit, math.ceil(high / unit) * unit


# ---------------------------------------------------------------------------- quadrature


def _midpoint_log_integral(
    log_prob: Callable[[Tensor], Tensor], bounds: Bounds, step: float
) -> float:
    r"""$\log \sum_{ij} e^{\log\tilde p(x_i, y_j)}\, h_x h_y$ over the cell midpoints of
    ``bounds`` cut into cells of side at most ``step``, in float64, block by block."""
    axes, log_cell = [], 0.0
    for low, high in bounds:
        count = max(1, math.ceil((high - low) / step - 1e-9))
        h = (high - low) / count
        axes.append(low + (torch.arange(count, dtype=torch.float64) + 0.5) * h)
        log_cell += math.log(h)
    xs, ys = axes
    rows = max(1, _CHUNK // len(ys))
    parts = []
    with torch.no_grad():
        for start in range(0, len(xs), rows):
            values = log_prob(torch.cartesian_prod(xs[start : start + rows], ys))
            if values.isnan().any() or (values == math.inf).any():
                raise ValueError("log_prob returned NaN or +inf on the quadrature grid")
            parts.append(torch.logsumexp(values.to(torch.float64), dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0).item() + log_cell


def quadrature_log_normalizer(
    log_prob: Callable[[Tensor], Tensor], bounds: Bounds, step: float
) -> tuple[float, float]:
    r"""$\log Z = \log\int_B \tilde p(z)\,dz$ over a 2-D box $B$ by the midpoint
    rule: ``(log Z, error estimate)``.

    ``log_prob`` maps float64 points ``(N, 2) -> (N,)``; ``bounds = ((x0, x1), (y0, y1))``.
    Each side is cut into cells of side at most ``step`` ($h$), the sum
    $\sum \tilde p(z_{ij})\, h_x h_y$ is taken as a logsumexp in blocks of
    $2^{18}$ points, and the rule is run at $h$ and at $h/2$. It returns the
    finer value and $|Q_h - Q_{h/2}|$ (plus `ROUNDING`) as its error estimate. For a
    smooth integrand that is negligible on the box's edges the midpoint rule converges faster
    than any power of $h$, so the error of $Q_{h/2}$ is far below that difference.
    The mass outside $B$ is not included: bound it separately.
    """
    if len(bounds) != 2:
        raise ValueError(f"bounds must be 2-D, ((x0, x1), (y0, y1)), got {bounds!r}")
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    coarse = _midpoint_log_integral(log_prob, bounds, step)
    fine = _midpoint_log_integral(log_prob, bounds, step / 2)
    return fine, abs(fine - coarse) + ROUNDING


# ---------------------------------------------------------------------------- base class


class Target(ABC):
    r"""An unnormalised density $\tilde p(z) = e^{-U(z)}$ over $\mathbb R^{dim}$.

    ``bounds`` is a plotting box for 2-D targets (None otherwise).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    dim: int
    bounds: Bounds | None = None

    def log_prob(self, z: Tensor) -> Tensor:
        r"""$\log\tilde p(z) = -U(z)$: ``(N, dim) -> (N,)`` in the dtype of ``z``,
        differentiable in ``z``."""
        _check_points(z, self.dim)
        return self._log_prob(z)

    @abstractmethod
    def _log_prob(self, z: Tensor) -> Tensor:
        """``log_prob`` after the checks."""

    def log_normalizer(self) -> float | None:
        r"""$\log Z = \log\int\tilde p(z)\,dz$, or None where it is not known."""
        return None

    def log_normalizer_error(self) -> float:
        """A bound on the absolute error of `log_normalizer()` (0 for closed forms, inf
        where it is not known)."""
        return 0.0 if self.log_normalizer() is not None else math.inf

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor | None:
        """``n`` exact samples of $\\tilde p / Z$, ``(n, dim)``, drawn in float64 and
        returned in ``dtype`` (default: torch's default dtype); None where there is no exact
        sampler."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        x = self._sample64(n, generator)
        return None if x is None else x.to(dtype or torch.get_default_dtype())

    def _sample64(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _fixed_dim(name: str, dim: int | None, expected: int = 2) -> int:
    if dim is not None and dim != expected:
        raise ValueError(f"target {name!r} is {expected}-D, got dim={dim!r}")
    return expected


# ---------------------------------------------------------------------------- the paper's U's


def confinement(z1: Tensor) -> Tensor:
    r"""The confining term added to U2, U3, U4: $c(z_1) = (z_1/5)^{32}$.

    It is $(4/5)^{32} = 7.9\cdot10^{-4}$ at $|z_1| = 4$ and
    $(3/5)^{32} = 8.0\cdot10^{-8}$ at $|z_1| = 3$, so inside the picture
    $[-4, 4]^2$ it lowers the density by at most 0.08% (by at most 8e-6 % where
    $|z_1| \le 3$). $e^{-c}$ is $e^{-1}$ at $|z_1| = 5$, below
    $e^{-21}$ beyond 5.5 and below $e^{-341}$ beyond 6. Its integral is
    $\int e^{-c} = 10\,\Gamma(1 + 1/32) = 9.8290$. For U2..U4 the marginal of
    $z_1$ is $\propto e^{-c}$, so 18.6% of their mass lies at
    $4 < |z_1| < 5.5$, where the waves continue. In float32 the term and its gradient
    stay finite up to $|z_1| \approx 75$ (beyond that ``log_prob`` is -inf).
    """
    return (z1 / CONFINE_SCALE) ** CONFINE_POWER


def _confinement_integral() -> float:
    r"""$\int_{\mathbb R} e^{-c(t)}\,dt = 2a\,\Gamma(1 + 1/(2m))$."""
    return 2 * CONFINE_SCALE * math.gamma(1 + 1 / CONFINE_POWER)


def _confinement_tail(limit: float) -> float:
    r"""A bound on $\int_{|t| > L} e^{-c(t)}\,dt$: $c$ is convex, so
    $c(t) \ge c(L) + c'(L)(t - L)$ and each side is at most $e^{-c(L)}/c'(L)$."""
    c = (limit / CONFINE_SCALE) ** CONFINE_POWER
    slope = CONFINE_POWER / CONFINE_SCALE * (limit / CONFINE_SCALE) ** (CONFINE_POWER - 1)
    return 2 * math.exp(-c) / slope


def _w1(z1: Tensor) -> Tensor:
    r"""$w_1(z) = \sin(2\pi z_1 / 4)$."""
    return torch.sin(0.5 * math.pi * z1)


def _w2(z1: Tensor) -> Tensor:
    r"""$w_2(z) = 3 e^{-\frac12((z_1 - 1)/0.6)^2}$."""
    return 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    r"""$w_3(z) = 3\sigma((z_1 - 1)/0.3)$, $\sigma$ the logistic sigmoid."""
    return 3 * torch.sigmoid((z1 - 1) / 0.3)


def _half_square(x: Tensor, s: float) -> Tensor:
    r"""$-\tfrac12 (x / s)^2$."""
    return -0.5 * (x / s) ** 2


class Energy(Target):
    r"""A 2-D target of Rezende & Mohamed whose $\log Z$ is found by quadrature.

    `log_normalizer()` runs `quadrature_log_normalizer()` once per class (cached) over
    ``quadrature_bounds`` at step ``quadrature_step`` (and half that). With
    $Z_B$ the integral over the box and $M$ a bound on the mass outside it
    (`tail_mass()`), $\log Z \in [\log Z_B, \log Z_B + M/Z_B]$;
    `log_normalizer_error()` is the quadrature's error estimate plus $M/Z_B$.
    No exact sampler: `sample()` returns None.
    """

    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))
    quadrature_bounds: ClassVar[Bounds]
    quadrature_step: ClassVar[float] = 0.05
    _cache: ClassVar[dict[type, tuple[float, float, float]]] = {}

    def __init__(self, dim: int | None = None) -> None:
        self.dim = _fixed_dim(self.name, dim)

    @abstractmethod
    def tail_mass(self) -> float:
        r"""An upper bound on $\int \tilde p$ outside ``quadrature_bounds``."""

    def _quadrature(self) -> tuple[float, float, float]:
        """``(log Z_B, discretisation error, tail error)``, computed once per class."""
        key = type(self)
        if key not in Energy._cache:
            log_z, error = quadrature_log_normalizer(
                self.log_prob, self.quadrature_bounds, self.quadrature_step
            )
            tail = self.tail_mass() / math.exp(log_z)
            Energy._cache[key] = (log_z, error, tail)
        return Energy._cache[key]

    def log_normalizer(self) -> float:
        return self._quadrature()[0]

    def log_normalizer_error(self) -> float:
        _, error, tail = self._quadrature()
        return error + tail

    def log_normalizer_error_terms(self) -> tuple[float, float]:
        """The two parts of `log_normalizer_error()`: ``(discretisation, outside box)``."""
        _, error, tail = self._quadrature()
        return error, tail


class U1(Energy):
    r"""Rezende & Mohamed's $U_1$: a ring of radius 2 with two modes at
    $z_1 = \pm 2$.

    $$
    U_1(z) = \tfrac12\Big(\frac{\|z\| - 2}{0.4}\Big)^2
    - \ln\Big(e^{-\frac12(\frac{z_1 - 2}{0.6})^2}
    + e^{-\frac12(\frac{z_1 + 2}{0.6})^2}\Big)
    $$

    It decays by itself (no confining term). Quadrature box $[-6, 6]^2$, ten ring widths
    (0.4) beyond the ring: the second factor of $e^{-U_1}$ is at most 2, so the mass
    outside the box, where $r = \|z\| > 6$, is at most
    $4\pi\int_6^\infty r e^{-(r-2)^2/(2\cdot0.4^2)}\,dr = 4\pi\big(s^2 e^{-50}
    + 2 s\sqrt{\pi/2}\,\mathrm{erfc}(10/\sqrt2)\big) < 10^{-21}$ ($s = 0.4$).
    $\log Z = 1.877502$ (midpoint rule, $h = 0.025$; error bound 1.4e-12, of which
    the step-h-versus-h/2 difference is 4e-13).
    """

    name = "u1"
    description = "Rezende & Mohamed's U1: a ring of radius 2 with two modes at z1 = +-2"
    quadrature_bounds: ClassVar[Bounds] = ((-6.0, 6.0), (-6.0, 6.0))

    def _log_prob(self, z: Tensor) -> Tensor:
        z1 = z[..., 0]
        ring = _half_square(torch.linalg.vector_norm(z, dim=-1) - 2, 0.4)
        return ring + torch.logaddexp(_half_square(z1 - 2, 0.6), _half_square(z1 + 2, 0.6))

    def tail_mass(self) -> float:
        # the largest disc about 0 inside the box; outside the box lies outside it
        s, gap = 0.4, min(abs(edge) for side in self.quadrature_bounds for edge in side) - 2
        radial = s * s * math.exp(-0.5 * (gap / s) ** 2)
        radial += 2 * s * math.sqrt(math.pi / 2) * math.erfc(gap / (s * math.sqrt(2)))
        return 2 * 2 * math.pi * radial


class _Wave(Energy):
    r"""U2, U3, U4: $e^{-U} = e^{-c(z_1)} \sum_k e^{-\frac12((z_2 - m_k(z_1))/s_k)^2}$.

    Each bump in $z_2$ integrates to $s_k\sqrt{2\pi}$ whatever $z_1$, so
    $Z = \sqrt{2\pi}\,\big(\sum_k s_k\big)\, 10\,\Gamma(1 + 1/32)$ in closed form (the
    quadrature is checked against it). ``kernels`` lists $(s_k, \min m_k, \max m_k)$.
    The box $|z_1| \le 6$ leaves $e^{-c} < e^{-341}$; in $z_2$ it reaches
    at least 10 widths $s_k$ past every centre $m_k$. The mass outside the box is
    at most $\sqrt{2\pi}\sum_k s_k$ times the $z_1$ tail of $e^{-c}$
    (`_confinement_tail()`) plus $\int e^{-c}$ times the Gaussian tails of each
    bump beyond $[y_0, y_1]$ from its extreme centres.
    """

    kernels: ClassVar[tuple[tuple[float, float, float], ...]]

    def tail_mass(self) -> float:
        (x0, x1), (y0, y1) = self.quadrature_bounds
        widths = sum(s for s, _, _ in self.kernels)
        along = math.sqrt(2 * math.pi) * widths * _confinement_tail(min(-x0, x1))
        across = sum(
            s * math.sqrt(2 * math.pi) * (_phi_upper((low - y0) / s) + _phi_upper((y1 - high) / s))
            for s, low, high in self.kernels
        )
        return along + _confinement_integral() * across


class U2(_Wave):
    r"""Rezende & Mohamed's $U_2$, a sine wave, confined along $z_1$.

    $$
    U_2(z) = \tfrac12\Big(\frac{z_2 - w_1(z)}{0.4}\Big)^2 + c(z_1), \qquad
    w_1(z) = \sin(2\pi z_1/4),
    $$

    $c(z_1) = (z_1/5)^{32}$ (`confinement()`: it changes $U$ by at most
    7.9e-4 in $[-4, 4]^2$ and 8.0e-8 where $|z_1| \le 3$). Quadrature box
    $[-6, 6] \times [-5, 5]$: 10 widths (0.4) past the wave's range $[-1, 1]$;
    mass outside < 2e-22. $\log Z = 2.287986$ (error bound 1.0e-12), equal to the closed
    form $\log(0.4\sqrt{2\pi}\cdot 10\,\Gamma(1 + 1/32))$.
    """

    name = "u2"
    description = "Rezende & Mohamed's U2: a sine wave (confined along z1 by (z1/5)^32)"
    quadrature_bounds: ClassVar[Bounds] = ((-6.0, 6.0), (-5.0, 5.0))
    kernels = ((0.4, -1.0, 1.0),)

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        return _half_square(z2 - _w1(z1), 0.4) - confinement(z1)


class U3(_Wave):
    r"""Rezende & Mohamed's $U_3$, a wave that splits in two, confined along
    $z_1$.

    $$
    U_3(z) = -\ln\Big(e^{-\frac12(\frac{z_2 - w_1}{0.35})^2}
    + e^{-\frac12(\frac{z_2 - w_1 + w_2}{0.35})^2}\Big) + c(z_1),\qquad
    w_2(z) = 3 e^{-\frac12((z_1 - 1)/0.6)^2},
    $$

    $c$ as in `confinement()` (changes $U$ by at most 7.9e-4 in
    $[-4, 4]^2$, 8.0e-8 where $|z_1| \le 3$). Quadrature box
    $[-6, 6] \times [-8, 5]$: 11 widths (0.35) past the centres' range $[-4, 1]$;
    mass outside < 1e-28. $\log Z = 2.847602$ (error bound 1.0e-12), equal to the closed
    form $\log(0.7\sqrt{2\pi}\cdot 10\,\Gamma(1 + 1/32))$.
    """

    name = "u3"
    description = "Rezende & Mohamed's U3: a wave that splits in two (confined along z1)"
    quadrature_bounds: ClassVar[Bounds] = ((-6.0, 6.0), (-8.0, 5.0))
    kernels = ((0.35, -1.0, 1.0), (0.35, -4.0, 1.0))

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        wave = z2 - _w1(z1)
        split = torch.logaddexp(_half_square(wave, 0.35), _half_square(wave + _w2(z1), 0.35))
        return split - confinement(z1)


class U4(_Wave):
    r"""Rezende & Mohamed's $U_4$, a wave with a step, confined along $z_1$.

    $$
    U_4(z) = -\ln\Big(e^{-\frac12(\frac{z_2 - w_1}{0.4})^2}
    + e^{-\frac12(\frac{z_2 - w_1 + w_3}{0.35})^2}\Big) + c(z_1),\qquad
    w_3(z) = 3\sigma\Big(\frac{z_1 - 1}{0.3}\Big),
    $$

    $\sigma$ the logistic sigmoid, $c$ as in `confinement()` (changes
    $U$ by at most 7.9e-4 in $[-4, 4]^2$, 8.0e-8 where $|z_1| \le 3$).
    Quadrature box $[-6, 6] \times [-8, 5]$: 10 widths past the centres' range
    $[-4, 1]$; mass outside < 1e-22. $\log Z = 2.916595$ (error bound 1.0e-12),
    equal to the closed form $\log(0.75\sqrt{2\pi}\cdot 10\,\Gamma(1 + 1/32))$.
    """

    name = "u4"
    description = "Rezende & Mohamed's U4: a wave with a sigmoid step (confined along z1)"
    quadrature_bounds: ClassVar[Bounds] = ((-6.0, 6.0), (-8.0, 5.0))
    kernels = ((0.4, -1.0, 1.0), (0.35, -4.0, 1.0))

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        wave = z2 - _w1(z1)
        step = torch.logaddexp(_half_square(wave, 0.4), _half_square(wave + _w3(z1), 0.35))
        return step - confinement(z1)


# ---------------------------------------------------------------------------- closed forms


class Banana(Target):
    r"""A twisted Gaussian (Haario, Saksman & Tamminen 1999):
    $z_1 \sim N(0, a^2)$, $z_2 \mid z_1 \sim N(b(z_1^2 - a^2), \sigma^2)$.

    $$
    \log\tilde p(z) = -\frac{z_1^2}{2a^2}
    - \frac{(z_2 - b(z_1^2 - a^2))^2}{2\sigma^2}, \qquad
    \log Z = \log(2\pi a\sigma)
    $$

    (the normalised density without its constant). Defaults $a = 2, b = 0.25,
    \sigma = 0.4$: $\log Z = \log 1.6\pi = 1.6147$; $E z = 0$. Exact sampler.
    Entropy $\tfrac12\log(2\pi e a^2) + \tfrac12\log(2\pi e\sigma^2)$.
    """

    name = "banana"
    description = "twisted Gaussian: z1 ~ N(0, 2^2), z2 | z1 ~ N(0.25 (z1^2 - 4), 0.4^2)"

    def __init__(
        self, a: float = 2.0, b: float = 0.25, sigma: float = 0.4, dim: int | None = None
    ) -> None:
        if not (a > 0 and sigma > 0):
            raise ValueError(f"a and sigma must be > 0, got a={a!r}, sigma={sigma!r}")
        self.dim = _fixed_dim(self.name, dim)
        self.a, self.b, self.sigma = float(a), float(b), float(sigma)
        ends = (-self.b * self.a**2, 8 * self.b * self.a**2)  # mean of z2 at z1 = 0, +-3a
        self.bounds = (
            (-3 * self.a, 3 * self.a),
            _round_out(min(ends) - 3 * self.sigma, max(ends) + 3 * self.sigma),
        )

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        bend = z2 - self.b * (z1 * z1 - self.a**2)
        return _half_square(z1, self.a) + _half_square(bend, self.sigma)

    def log_normalizer(self) -> float:
        return LOG_2PI + math.log(self.a * self.sigma)

    def _sample64(self, n: int, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        z1 = self.a * eps[:, 0]
        return torch.stack([z1, self.b * (z1 * z1 - self.a**2) + self.sigma * eps[:, 1]], 1)


class Funnel(Target):
    r"""Neal's funnel (Neal 2003): $v \sim N(0, s^2)$, $x_i \mid v \sim N(0, e^v)$
    for $i = 1..d-1$, with $z = (v, x_1, \dots, x_{d-1})$.

    $$
    \log\tilde p(z) = -\frac{v^2}{2s^2} - \frac{d - 1}{2} v
    - \frac12 e^{-v}\sum_i x_i^2, \qquad \log Z = \log s + \tfrac d2\log 2\pi
    $$

    Defaults $d = 2$ (``bounds`` ``((-9, 9), (-10, 10))``), $s = 3$:
    $\log Z = \log 6\pi = 2.9365$. Exact sampler $v = s\epsilon_0$,
    $x = e^{v/2}\epsilon$. Entropy
    $\tfrac12\log(2\pi e s^2) + \tfrac{d-1}2\log(2\pi e)$. Finite in float32 for
    $|v| \lesssim 80$ (and $|x| \le 50$).
    """

    name = "funnel"
    description = "Neal's funnel: v ~ N(0, 3^2), x | v ~ N(0, e^v), z = (v, x)"

    def __init__(self, dim: int = 2, scale: float = 3.0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.dim, self.scale = dim, float(scale)
        self.bounds = ((-3 * self.scale, 3 * self.scale), (-10.0, 10.0)) if dim == 2 else None

    def _log_prob(self, z: Tensor) -> Tensor:
        v, x = z[..., 0], z[..., 1:]
        spread = 0.5 * (x * x).sum(-1) * torch.exp(-v)
        return _half_square(v, self.scale) - 0.5 * (self.dim - 1) * v - spread

    def log_normalizer(self) -> float:
        return math.log(self.scale) + 0.5 * self.dim * LOG_2PI

    def _sample64(self, n: int, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        v = self.scale * eps[:, :1]
        return torch.cat([v, torch.exp(0.5 * v) * eps[:, 1:]], dim=1)


class GaussianMixture(Target):
    r"""A mixture of Gaussians with diagonal covariances and known masses $w_k$:

    $$
    \tilde p(z) = (2\pi)^{d/2}\sum_k w_k\,\mathcal N(z; \mu_k, \mathrm{diag}\,\sigma_k^2),
    \qquad \log Z = \tfrac d2\log 2\pi + \log\textstyle\sum_k w_k,
    $$

    computed as a logsumexp over the components. ``means``: ``(K, d)``; ``stds``: ``(K,)``
    (isotropic) or ``(K, d)``; ``weights``: ``(K,)``, positive, need not sum to 1 (the
    mixture's probabilities are $w_k / \sum w$). Default: 2-D, means
    $(-2, -1.5), (2, -1.5), (0, 2)$, stds 0.5, 0.7, 0.4, weights 0.5, 0.3, 0.2 (the
    closest pair is 4 apart, 3.3 summed stds): $\log Z = \log 2\pi = 1.8379$.
    Exact sampler.
    """

    name = "gmm"
    description = "3 well-separated 2-D Gaussians, weights 0.5, 0.3, 0.2"

    def __init__(
        self,
        means: Sequence[Sequence[float]] | Tensor = ((-2.0, -1.5), (2.0, -1.5), (0.0, 2.0)),
        stds: Sequence[float] | Sequence[Sequence[float]] | Tensor = (0.5, 0.7, 0.4),
        weights: Sequence[float] | Tensor = (0.5, 0.3, 0.2),
        dim: int | None = None,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2 or len(self.means) == 0:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        count, self.dim = self.means.shape
        if dim is not None and dim != self.dim:
            raise ValueError(f"dim={dim!r} does not match means of dimension {self.dim}")
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.shape == (count,):
            stds = stds.unsqueeze(1)
        if stds.shape not in ((count, 1), (count, self.dim)) or not (stds > 0).all():
            raise ValueError(f"stds must be positive, of shape ({count},) or {(count, self.dim)}")
        self.stds = stds.expand(count, self.dim).clone()
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.shape != (count,) or not (self.weights > 0).all():
            raise ValueError(f"weights must be {count} positive numbers, got {weights!r}")
        if self.dim == 2:
            low = (self.means - 3.5 * self.stds).min(0).values.tolist()
            high = (self.means + 3.5 * self.stds).max(0).values.tolist()
            self.bounds = tuple(_round_out(lo, hi) for lo, hi in zip(low, high, strict=True))

    def _log_prob(self, z: Tensor) -> Tensor:
        means, stds = self.means.to(z), self.stds.to(z)
        log_coef = (self.weights.log() - self.stds.log().sum(1)).to(z)
        scaled = (z.unsqueeze(-2) - means) / stds  # (..., K, d)
        return torch.logsumexp(log_coef - 0.5 * (scaled * scaled).sum(-1), dim=-1)

    def log_normalizer(self) -> float:
        return 0.5 * self.dim * LOG_2PI + math.log(self.weights.sum().item())

    def _sample64(self, n: int, generator: torch.Generator | None) -> Tensor:
        index = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[index] + self.stds[index] * eps


class Gaussian(Target):
    r"""A correlated Gaussian, $\tilde p(z) = e^{-\frac12(z-\mu)^\top\Sigma^{-1}(z-\mu)}$,
    $\log Z = \tfrac12\log\det(2\pi\Sigma)$.

    Either explicit ``mean`` ``(d,)`` (default 0) and ``covariance`` ``(d, d)`` (symmetric,
    positive definite), or a random one from ``dim`` and ``seed``: $\Sigma = Q\Lambda
    Q^\top$ with $Q$ a random orthogonal matrix (QR of a standard normal matrix, signs
    fixed) and eigenvalues $\lambda_i = 0.1\cdot 30^{i/(d-1)}$, $i = 0..d-1$
    (geometric from 0.1 to 3, condition number 30; 0.1 for $d = 1$), and
    $\mu \sim N(0, I)$, all from ``torch.Generator().manual_seed(seed)`` in float64.
    ``mean`` and ``covariance`` are float64 attributes. Evaluated through the inverse of the
    Cholesky factor $L$: $\log\tilde p = -\frac12\|L^{-1}(z - \mu)\|^2$. Exact
    sampler $\mu + L\epsilon$.
    """

    name = "gaussian"
    description = "correlated Gaussian in any dimension (dim=, seed=, or mean=, covariance=)"

    def __init__(
        self,
        dim: int | None = None,
        seed: int = 0,
        mean: Sequence[float] | Tensor | None = None,
        covariance: Sequence[Sequence[float]] | Tensor | None = None,
    ) -> None:
        if covariance is None:
            dim = 2 if dim is None else dim
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
            generator = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
            q = q * torch.where(r.diagonal() < 0, -1.0, 1.0)
            eigenvalues = 0.1 * 30.0 ** torch.linspace(0, 1, dim, dtype=torch.float64)
            covariance = (q * eigenvalues) @ q.T
            covariance = 0.5 * (covariance + covariance.T)
            if mean is None:
                mean = torch.randn(dim, generator=generator, dtype=torch.float64)
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        if covariance.dim() != 2 or covariance.shape[0] != covariance.shape[1]:
            raise ValueError(f"covariance must be (d, d), got {tuple(covariance.shape)}")
        self.dim = covariance.shape[0]
        if dim is not None and dim != self.dim:
            raise ValueError(f"dim={dim!r} does not match a covariance of size {self.dim}")
        if not torch.allclose(covariance, covariance.T, rtol=1e-10, atol=1e-12):
            raise ValueError("covariance must be symmetric")
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if info.item() != 0:
            raise ValueError("covariance must be positive definite")
        mean = torch.zeros(self.dim, dtype=torch.float64) if mean is None else mean
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        if self.mean.shape != (self.dim,):
            raise ValueError(f"mean must have shape ({self.dim},), got {tuple(self.mean.shape)}")
        self.covariance, self.cholesky = covariance, cholesky
        eye = torch.eye(self.dim, dtype=torch.float64)
        self._whiten = torch.linalg.solve_triangular(cholesky, eye, upper=False).T  # L^-T
        if self.dim == 2:
            half = 3.5 * covariance.diagonal().sqrt()
            self.bounds = tuple(
                _round_out(m - h, m + h)
                for m, h in zip(self.mean.tolist(), half.tolist(), strict=True)
            )

    def _log_prob(self, z: Tensor) -> Tensor:
        white = (z - self.mean.to(z)) @ self._whiten.to(z)
        return -0.5 * (white * white).sum(-1)

    def log_normalizer(self) -> float:
        return 0.5 * self.dim * LOG_2PI + self.cholesky.diagonal().log().sum().item()

    def _sample64(self, n: int, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + eps @ self.cholesky.T


# ---------------------------------------------------------------------------- registry

_CLASSES: dict[str, type[Target]] = {
    cls.name: cls for cls in (U1, U2, U3, U4, Banana, Funnel, GaussianMixture, Gaussian)
}

TARGETS: dict[str, str] = {name: cls.description for name, cls in _CLASSES.items()}
"""Every target's name and a one-line description (``flowforge list``)."""


def get(name: str, **kwargs) -> Target:
    """The target called ``name`` (a key of `TARGETS`), built with ``kwargs``."""
    if name not in _CLASSES:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join(_CLASSES)}")
    return _CLASSES[name](**kwargs)
