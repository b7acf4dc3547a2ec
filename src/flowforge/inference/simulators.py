r"""Simulators with a known posterior, to check amortized simulation-based inference.

A simulator is a prior $p(\theta)$ over parameters ``(n, theta_dim)`` and a stochastic
model $x \sim p(x \mid \theta)$ of observations ``(n, x_dim)``. A conditional flow
$q(\theta \mid x)$ trained on simulated pairs $(\theta_i, x_i)$ should match the
posterior

$$
p(\theta \mid x) = \frac{p(x \mid \theta)\, p(\theta)}{p(x)}, \qquad
p(x) = \int p(x \mid \theta)\, p(\theta)\, d\theta .
$$

Both simulators here know it: `LinearGaussian` in closed form (Gaussian conjugacy),
`TwoMoons` on a fine grid (and by exact rejection sampling). They share one interface
(`Simulator`), so one evaluation serves both:

=========================================  ====================================================
``sample_prior(n, generator)``             $\theta \sim p(\theta)$, ``(n, theta_dim)``
``simulate(theta, generator)``             $x \sim p(x \mid \theta)$, ``(n, x_dim)``
``sample_joint(n, seed)``                  both, reproducibly from ``seed``
``log_prior(theta)``                       $\log p(\theta)$, ``(...,)``
``log_likelihood(theta, x)``               $\log p(x \mid \theta)$, ``(...,)``
``log_evidence(x)``                        $\log p(x)$, ``(m,)``
``log_posterior(theta, x)``                $\log p(\theta \mid x)$, ``(...,)``
``posterior_moments(x)``                   mean ``(m, theta_dim)``, covariance ``(m, d, d)``
``sample_posterior(x, n, generator)``      exact posterior samples ``(n, m, theta_dim)``
=========================================  ====================================================

Analytic quantities are computed in float64 and returned in the dtype of the input (samples
in the simulator's ``dtype``, float32 by default). Leading dimensions of ``theta`` and ``x``
broadcast in ``log_prior``, ``log_likelihood`` and ``log_posterior``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cache

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def _rows(values: Tensor, dim: int, name: str) -> Tensor:
    """``values`` as a float64 ``(m, dim)`` tensor (a single ``(dim,)`` row becomes ``m = 1``)."""
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() != 2 or values.shape[1] != dim:
        raise ValueError(
            f"{name} must have shape (m, {dim}) or ({dim},), got {tuple(values.shape)}"
        )
    return values.double()


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _output_dtype(*tensors: Tensor) -> torch.dtype:
    """The floating dtype to return: the widest of the inputs' floating dtypes (float32 if
    none is floating)."""
    dtypes = [t.dtype for t in tensors if t.is_floating_point()]
    dtype = torch.float32
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype


class Simulator(ABC):
    r"""The interface shared by the simulators: a prior, a simulator and their posterior.

    Subclasses set ``theta_dim``, ``x_dim``, ``names`` (LaTeX labels of the parameters) and
    ``dtype`` (of the samples), and implement ``sample_prior``, ``simulate``, ``log_prior``,
    ``log_likelihood``, ``log_evidence``, ``posterior_moments`` and ``sample_posterior``.
    """

    theta_dim: int
    x_dim: int
    names: tuple[str, ...]
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""$\theta_i \sim p(\theta)$: ``(n, theta_dim)``."""

    @abstractmethod
    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""$x_i \sim p(x \mid \theta_i)$: ``(n, theta_dim) -> (n, x_dim)``."""

    def sample_joint(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        r"""``n`` pairs $\theta_i \sim p(\theta)$, $x_i \sim p(x \mid \theta_i)$
        from a generator seeded with ``seed``: ``(n, theta_dim)``, ``(n, x_dim)``."""
        _check_count("n", n)
        generator = torch.Generator().manual_seed(seed)
        theta = self.sample_prior(n, generator)
        return theta, self.simulate(theta, generator)

    @abstractmethod
    def log_prior(self, theta: Tensor) -> Tensor:
        r"""$\log p(\theta)$: ``(..., theta_dim) -> (...)``."""

    @abstractmethod
    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""$\log p(x \mid \theta)$: ``(..., theta_dim), (..., x_dim) -> (...)``."""

    @abstractmethod
    def log_evidence(self, x: Tensor) -> Tensor:
        r"""$\log p(x) = \log \int p(x \mid \theta) p(\theta)\, d\theta$:
        ``(m, x_dim) -> (m,)``."""

    def log_posterior(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""$\log p(\theta \mid x) = \log p(x \mid \theta) + \log p(\theta) - \log p(x)$.

        ``theta`` ``(m, theta_dim)`` and ``x`` ``(m, x_dim)`` are pairs; or ``theta``
        ``(n, m, theta_dim)`` holds ``n`` points per row of ``x`` (the layout of
        `sample_posterior()`). Returns ``(m,)`` or ``(n, m)``.
        """
        x_rows = _rows(x, self.x_dim, "x")
        evidence = self.log_evidence(x_rows)
        value = self.log_likelihood(theta, x_rows) + self.log_prior(theta) - evidence
        return value.to(_output_dtype(theta, x))

    @abstractmethod
    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Posterior mean $E[\theta \mid x]$ ``(m, theta_dim)`` and covariance
        $\mathrm{Cov}[\theta \mid x]$ ``(m, theta_dim, theta_dim)`` for ``x``
        ``(m, x_dim)``."""

    @abstractmethod
    def sample_posterior(
        self, x: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""``n`` exact draws $\theta \sim p(\theta \mid x_j)$ per row of ``x``:
        ``(m, x_dim) -> (n, m, theta_dim)`` (the layout of ``Flow.sample(n, context=x)``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(theta_dim={self.theta_dim}, x_dim={self.x_dim})"


class LinearGaussian(Simulator):
    r"""A linear-Gaussian model, whose posterior is Gaussian in closed form.

    $$
    \theta \sim \mathcal N(\mu_0, S_0), \qquad
    x = A\theta + b + \varepsilon, \quad \varepsilon \sim \mathcal N(0, \sigma^2 I)
    $$

    with a fixed random matrix $A_{ij} \sim \mathcal N(0, 1/d_\theta)$ and offset
    $b_i \sim \mathcal N(0, 1)$ drawn from ``seed``. By conjugacy,

    $$
    p(\theta \mid x) = \mathcal N(\mu(x), \Sigma), \quad
    \Sigma = \big(S_0^{-1} + A^\top A / \sigma^2\big)^{-1}, \quad
    \mu(x) = \Sigma \big(S_0^{-1}\mu_0 + A^\top (x - b) / \sigma^2\big)
    $$

    and $x \sim \mathcal N(A\mu_0 + b,\ A S_0 A^\top + \sigma^2 I)$ marginally. The
    posterior covariance does not depend on ``x``.

    Args:
        theta_dim: the dimension of $\theta$.
        x_dim: the dimension of $x$.
        noise: the noise scale $\sigma$.
        seed: draws $A$ and $b$.
        prior_mean: $\mu_0$ ``(theta_dim,)``, default zero.
        prior_cov: $S_0$ ``(theta_dim, theta_dim)``, default the identity.
        dtype: the dtype of the samples.
    """

    def __init__(
        self,
        theta_dim: int = 2,
        x_dim: int = 2,
        noise: float = 0.5,
        seed: int = 0,
        prior_mean: Tensor | None = None,
        prior_cov: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.theta_dim = _check_count("theta_dim", theta_dim)
        self.x_dim = _check_count("x_dim", x_dim)
        if not (isinstance(noise, int | float) and noise > 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a positive number, got {noise!r}")
        self.noise = float(noise)
        self.seed = seed
        self.dtype = dtype
        self.names = tuple(rf"$\theta_{i + 1}$" for i in range(theta_dim))
        generator = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.A = torch.randn(x_dim, theta_dim, generator=generator, dtype=f64) / math.sqrt(
            theta_dim
        )
        self.b = torch.randn(x_dim, generator=generator, dtype=f64)
        self.prior_mean = (
            torch.zeros(theta_dim, dtype=f64)
            if prior_mean is None
            else torch.as_tensor(prior_mean, dtype=f64).reshape(theta_dim)
        )
        self.prior_cov = (
            torch.eye(theta_dim, dtype=f64)
            if prior_cov is None
            else torch.as_tensor(prior_cov, dtype=f64).reshape(theta_dim, theta_dim)
        )
        self.prior_scale = torch.linalg.cholesky(self.prior_cov)  # fails unless SPD
        prior_precision = torch.cholesky_inverse(self.prior_scale)
        variance = self.noise**2
        precision = prior_precision + self.A.T @ self.A / variance
        self.posterior_cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        self.posterior_cov = (self.posterior_cov + self.posterior_cov.T) / 2
        self.posterior_scale = torch.linalg.cholesky(self.posterior_cov)
        # mu(x) = gain @ (x - b) + intercept
        self.gain = self.posterior_cov @ self.A.T / variance
        self.intercept = self.posterior_cov @ prior_precision @ self.prior_mean
        self.evidence_mean = self.A @ self.prior_mean + self.b
        self.evidence_cov = self.A @ self.prior_cov @ self.A.T + variance * torch.eye(
            x_dim, dtype=f64
        )

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""$\theta = \mu_0 + L_0 z$, $L_0 L_0^\top = S_0$,
        $z \sim \mathcal N(0, I)$: ``(n, theta_dim)``."""
        _check_count("n", n)
        z = torch.randn(n, self.theta_dim, generator=generator, dtype=torch.float64)
        return (self.prior_mean + z @ self.prior_scale.T).to(self.dtype)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""$x = A\theta + b + \sigma \varepsilon$: ``(n, theta_dim) -> (n, x_dim)``."""
        theta = _rows(theta, self.theta_dim, "theta")
        eps = torch.randn(len(theta), self.x_dim, generator=generator, dtype=torch.float64)
        return (theta @ self.A.T + self.b + self.noise * eps).to(self.dtype)

    def log_prior(self, theta: Tensor) -> Tensor:
        r"""$\log \mathcal N(\theta; \mu_0, S_0)$: ``(..., theta_dim) -> (...)``."""
        value = _gaussian_log_prob(theta.double(), self.prior_mean, self.prior_scale)
        return value.to(_output_dtype(theta))

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""$\log \mathcal N(x; A\theta + b, \sigma^2 I)
        = -\frac{\|x - A\theta - b\|^2}{2\sigma^2} - \frac{d_x}{2}\log(2\pi\sigma^2)$:
        ``(..., theta_dim), (..., x_dim) -> (...)``."""
        residual = x.double() - theta.double() @ self.A.T - self.b
        value = -0.5 * (residual**2).sum(-1) / self.noise**2
        value = value - 0.5 * self.x_dim * (LOG_2PI + 2 * math.log(self.noise))
        return value.to(_output_dtype(theta, x))

    def log_evidence(self, x: Tensor) -> Tensor:
        r"""$\log \mathcal N(x; A\mu_0 + b,\ A S_0 A^\top + \sigma^2 I)$:
        ``(m, x_dim) -> (m,)``."""
        rows = _rows(x, self.x_dim, "x")
        scale = torch.linalg.cholesky(self.evidence_cov)
        return _gaussian_log_prob(rows, self.evidence_mean, scale).to(_output_dtype(x))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The exact posterior $\mathcal N(\mu(x), \Sigma)$: mean ``(m, theta_dim)``
        for ``x`` ``(m, x_dim)``, and the covariance ``(theta_dim, theta_dim)`` shared by all
        rows."""
        rows = _rows(x, self.x_dim, "x")
        mean = (rows - self.b) @ self.gain.T + self.intercept
        dtype = _output_dtype(x)
        return mean.to(dtype), self.posterior_cov.to(dtype)

    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""$\mu(x)$ ``(m, theta_dim)`` and $\Sigma$ repeated per row,
        ``(m, theta_dim, theta_dim)``."""
        mean, cov = self.posterior(x)
        return mean, cov.expand(len(mean), -1, -1).clone()

    def sample_posterior(
        self, x: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""$\theta = \mu(x) + L z$, $L L^\top = \Sigma$,
        $z \sim \mathcal N(0, I)$: ``(m, x_dim) -> (n, m, theta_dim)``."""
        _check_count("n", n)
        mean, _ = self.posterior(x.double())
        # drawn observation by observation, so that rows give the same draws in any batches
        z = torch.randn(len(mean), n, self.theta_dim, generator=generator, dtype=torch.float64)
        return (mean + z.transpose(0, 1) @ self.posterior_scale.T).to(_output_dtype(x))

    def __repr__(self) -> str:
        return (
            f"LinearGaussian(theta_dim={self.theta_dim}, x_dim={self.x_dim}, "
            f"noise={self.noise}, seed={self.seed})"
        )


def _gaussian_log_prob(values: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    r"""$\log \mathcal N(v; \mu, L L^\top)$ for float64 ``values`` ``(..., d)``."""
    centred = (values - mean).unsqueeze(-1)
    scale = scale.expand(*centred.shape[:-2], *scale.shape)
    white = torch.linalg.solve_triangular(scale, centred, upper=False).squeeze(-1)
    half_logdet = torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (white**2).sum(-1) - half_logdet - 0.5 * mean.shape[-1] * LOG_2PI


@cache
def _cell_centres(resolution: int) -> Tensor:
    """Centres ``(resolution**2, 2)`` (float64) of a ``resolution``-square grid of cells over
    ``[-1, 1]^2``, $\\theta_1$ varying fastest (so rows of the reshaped grid run along
    $\\theta_1$ and successive rows step in $\\theta_2$)."""
    h = 2.0 / resolution
    ticks = -1.0 + h * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    t2, t1 = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack((t1.reshape(-1), t2.reshape(-1)), dim=1)


@cache
def _grid_offsets(resolution: int, shift: float) -> Tensor:
    """``offset(theta_c) + (shift, 0)`` at the cell centres of `_cell_centres()`, so that
    ``u = x - offsets`` (the x-independent part of the two-moons likelihood, computed once)."""
    centres = _cell_centres(resolution)
    return TwoMoons.offset(centres) + torch.tensor([shift, 0.0], dtype=torch.float64)


class TwoMoons(Simulator):
    r"""The two-moons simulator of the SBI benchmarks (Greenberg et al. 2019; Lueckmann et
    al. 2021, ``sbibm``), whose posterior is two thin crescents.

    $$
    \theta \sim U[-1, 1]^2, \quad a \sim U(-\tfrac\pi2, \tfrac\pi2), \quad
    r \sim \mathcal N(0.1, 0.01^2), \quad p = (r\cos a + 0.25,\ r \sin a),

    x = p + \Big(-\frac{|\theta_1 + \theta_2|}{\sqrt2},\
    \frac{-\theta_1 + \theta_2}{\sqrt2}\Big).
    $$

    **Likelihood.** With $u = x - \mathrm{offset}(\theta) - (0.25, 0) = r(\cos a, \sin a)$
    and $\rho = \|u\|$: the map $(r, a) \mapsto u$ from
    $\mathbb R \times (-\frac\pi2, \frac\pi2)$ is one-to-one onto the plane (off the
    line $u_1 = 0$), with $|\det \partial u / \partial(r, a)| = |r| = \rho$, and
    $r = \rho$ on the right half-plane $u_1 > 0$, $r = -\rho$ on the left.
    So the exact density is

    $$
    p(x \mid \theta) = \frac{\mathcal N(\pm\rho;\ 0.1, 0.01^2)}{\pi\, \rho}, \qquad
    + \text{ if } u_1 > 0, \ - \text{ if } u_1 < 0,
    $$

    a ring of radius 0.1 and width 0.01 cut to its right half (the left half carries the mass
    of $r < 0$, about $e^{-200}$).

    **Posterior.** The offset depends on $\theta$ through the rotation
    $s = (\theta_1 + \theta_2)/\sqrt2$, $d = (\theta_2 - \theta_1)/\sqrt2$ only as
    $(|s|, d)$, so every posterior is symmetric under
    $(\theta_1, \theta_2) \mapsto (-\theta_2, -\theta_1)$ (two mirrored crescents), and
    for $x = (0, 0)$ also under $\theta_1 \leftrightarrow \theta_2$. It is
    computed on a grid of ``resolution`` x ``resolution`` cells over the prior's support
    (`posterior_grid()`; the default cell width 0.002 is a fifth of the crescents' width)
    and sampled exactly by rejection (`sample_posterior()`).

    Args:
        resolution: cells per axis of the default posterior grid.
        dtype: the dtype of the samples.
    """

    theta_dim = 2
    x_dim = 2
    radius_mean = 0.1
    radius_std = 0.01
    shift = 0.25

    def __init__(self, resolution: int = 1000, dtype: torch.dtype = torch.float32) -> None:
        self.resolution = _check_count("resolution", resolution)
        self.dtype = dtype
        self.names = (r"$\theta_1$", r"$\theta_2$")

    # --- the model ---------------------------------------------------------------------

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""$\theta \sim U[-1, 1]^2$: ``(n, 2)``."""
        _check_count("n", n)
        return (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1).to(self.dtype)

    @staticmethod
    def offset(theta: Tensor) -> Tensor:
        r"""$\big(-|\theta_1 + \theta_2|/\sqrt2,\ (-\theta_1 + \theta_2)/\sqrt2\big)$:
        ``(..., 2) -> (..., 2)``."""
        s = (theta[..., 0] + theta[..., 1]) / math.sqrt(2)
        d = (theta[..., 1] - theta[..., 0]) / math.sqrt(2)
        return torch.stack((-s.abs(), d), dim=-1)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        r"""$u = r(\cos a, \sin a)$ with $a \sim U(-\frac\pi2, \frac\pi2)$,
        $r \sim \mathcal N(0.1, 0.01^2)$: float64 ``(*shape, 2)``."""
        a = math.pi * (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5)
        r = self.radius_mean + self.radius_std * torch.randn(
            shape, generator=generator, dtype=torch.float64
        )
        return torch.stack((r * torch.cos(a), r * torch.sin(a)), dim=-1)

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""$x = p + \mathrm{offset}(\theta)$: ``(n, 2) -> (n, 2)``."""
        theta = _rows(theta, 2, "theta")
        p = self._noise((len(theta),), generator) + torch.tensor([self.shift, 0.0])
        return (p + self.offset(theta)).to(self.dtype)

    def log_prior(self, theta: Tensor) -> Tensor:
        r"""$\log p(\theta) = -\log 4$ on $[-1, 1]^2$, $-\infty$ outside:
        ``(..., 2) -> (...)``."""
        inside = (theta.abs() <= 1).all(-1)
        value = torch.full(inside.shape, -math.log(4.0), dtype=torch.float64)
        return value.masked_fill(~inside, -math.inf).to(_output_dtype(theta))

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""$\log p(x \mid \theta) = \log \mathcal N(\pm\rho; 0.1, 0.01^2) - \log \pi
        - \log \rho$ (see the class docstring): ``(..., 2), (..., 2) -> (...)``."""
        return self._log_likelihood(theta.double(), x.double()).to(_output_dtype(theta, x))

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        u = x - self.offset(theta) - torch.tensor([self.shift, 0.0], dtype=torch.float64)
        return self._log_noise_density(u)

    def _log_noise_density(self, u: Tensor) -> Tensor:
        """The log-density of ``u = r (cos a, sin a)`` at float64 ``u`` ``(..., 2)``."""
        rho = torch.linalg.vector_norm(u, dim=-1).clamp_min(1e-300)
        r = torch.where(u[..., 0] >= 0, rho, -rho)
        z = (r - self.radius_mean) / self.radius_std
        return (
            -0.5 * z**2 - math.log(self.radius_std) - 0.5 * LOG_2PI - math.log(math.pi) - rho.log()
        )

    # --- the posterior on a grid ---------------------------------------------------------

    def _grid_log_likelihood(self, x_row: Tensor, resolution: int) -> Tensor:
        r"""$\log p(x \mid \theta_c)$ at every cell centre: float64 ``(resolution**2,)``."""
        return self._log_noise_density(x_row - _grid_offsets(resolution, self.shift))

    def posterior_grid(self, x_obs: Tensor, resolution: int | None = None) -> tuple[Tensor, Tensor]:
        r"""The posterior on a grid of cells over $[-1, 1]^2$:

        $$
        w_c = \frac{p(x \mid \theta_c)}{\sum_{c'} p(x \mid \theta_{c'})}
        \approx P(\theta \in \text{cell } c \mid x)
        $$

        (the prior is uniform on the grid). Returns the cell centres ``(R*R, 2)``, with
        $\theta_1$ varying fastest, so ``weights.reshape(R, R)`` has rows along
        $\theta_2$ (as ``imshow(..., origin="lower")`` and ``contour`` expect), and the
        weights ``(R*R,)`` for ``x_obs`` ``(2,)``, or ``(m, R*R)`` for ``(m, 2)`` (memory
        ``8 m R^2`` bytes), each summing to 1; float64. ``R`` is ``resolution``, by default
        the simulator's; the density of the grid posterior is ``w_c / (2/R)**2``.
        """
        resolution = (
            self.resolution if resolution is None else _check_count("resolution", resolution)
        )
        single = x_obs.dim() == 1
        rows = _rows(x_obs, 2, "x_obs")
        weights = torch.stack(
            [torch.softmax(self._grid_log_likelihood(row, resolution), 0) for row in rows]
        )
        return _cell_centres(resolution).clone(), weights[0] if single else weights

    def log_evidence(self, x: Tensor, resolution: int | None = None) -> Tensor:
        r"""$\log p(x) \approx \log \sum_c p(x \mid \theta_c)\, \tfrac14\, h^2$ with cell
        width $h = 2/R$ (midpoint rule over the prior's support): ``(m, 2) -> (m,)``."""
        resolution = (
            self.resolution if resolution is None else _check_count("resolution", resolution)
        )
        rows = _rows(x, 2, "x")
        log_cell = 2 * math.log(2.0 / resolution) - math.log(4.0)
        values = [torch.logsumexp(self._grid_log_likelihood(row, resolution), 0) for row in rows]
        return (torch.stack(values) + log_cell).to(_output_dtype(x))

    def posterior_moments(
        self, x_obs: Tensor, resolution: int | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Mean ``(m, 2)`` and covariance ``(m, 2, 2)`` of the grid posterior (uniform within
        each cell, hence the $h^2/12$ term):

        $$
        \mu = \sum_c w_c \theta_c, \qquad
        \Sigma = \sum_c w_c (\theta_c - \mu)(\theta_c - \mu)^\top + \tfrac{h^2}{12} I
        $$

        """
        resolution = (
            self.resolution if resolution is None else _check_count("resolution", resolution)
        )
        rows = _rows(x_obs, 2, "x_obs")
        centres = _cell_centres(resolution)
        means, covs = [], []
        for row in rows:
            weights = torch.softmax(self._grid_log_likelihood(row, resolution), 0)
            mean = weights @ centres
            centred = centres - mean
            cov = (centred * weights.unsqueeze(1)).T @ centred
            means.append(mean)
            covs.append(cov + (2.0 / resolution) ** 2 / 12 * torch.eye(2, dtype=torch.float64))
        dtype = _output_dtype(x_obs)
        return torch.stack(means).to(dtype), torch.stack(covs).to(dtype)

    def sample_posterior_grid(
        self,
        x_obs: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        resolution: int | None = None,
    ) -> Tensor:
        r"""``n`` draws per row of ``x_obs`` ``(m, 2)`` from the grid posterior: a cell
        $c \sim w$, then a uniform point in it. Returns ``(n, m, 2)``. For plots; see
        `sample_posterior()` for exact draws."""
        _check_count("n", n)
        resolution = (
            self.resolution if resolution is None else _check_count("resolution", resolution)
        )
        rows = _rows(x_obs, 2, "x_obs")
        centres = _cell_centres(resolution)
        h = 2.0 / resolution
        out = []
        for row in rows:
            weights = torch.softmax(self._grid_log_likelihood(row, resolution), 0)
            cells = torch.multinomial(weights, n, replacement=True, generator=generator)
            jitter = h * (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5)
            out.append(centres[cells] + jitter)
        return torch.stack(out, 1).to(_output_dtype(x_obs))

    # --- exact posterior samples ----------------------------------------------------------

    def sample_posterior(
        self,
        x: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        max_rounds: int = 200,
    ) -> Tensor:
        r"""``n`` exact posterior draws per row of ``x`` ``(m, 2)``, by rejection: ``(n, m, 2)``.

        Draw the simulator's noise $u = r(\cos a, \sin a)$ and a sign $\pm$, and
        solve $x = u + (0.25, 0) + \mathrm{offset}(\theta)$ for $\theta$:
        $|s| = u_1 + 0.25 - x_1$, $s = \pm|s|$, $d = x_2 - u_2$,
        $\theta = \big((s - d)/\sqrt2, (s + d)/\sqrt2\big)$. This map has unit Jacobian
        and covers each $\theta$ once, so keeping the draws with $|s| \ge 0$ and
        $\theta \in [-1, 1]^2$ leaves draws from
        $p(\theta \mid x) \propto p(x \mid \theta)\, 1[\theta \in [-1, 1]^2]$.
        Raises ``RuntimeError`` if an ``x`` is so unlikely that ``max_rounds`` rounds of
        proposals do not suffice.
        """
        _check_count("n", n)
        rows = _rows(x, 2, "x")
        m = len(rows)
        out = torch.empty(m, n, 2, dtype=torch.float64)
        filled = torch.zeros(m, dtype=torch.long)
        proposals = max(2 * n, 64)
        for _ in range(max_rounds):
            todo = (filled < n).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            theta, ok = self._propose(rows[todo], proposals, generator)
            position = filled[todo].unsqueeze(1) + ok.cumsum(1) - 1
            keep = ok & (position < n)
            row_index = todo.unsqueeze(1).expand_as(keep)
            out[row_index[keep], position[keep]] = theta[keep]
            filled[todo] += keep.sum(1)
            proposals = min(2 * proposals, 1 << 16)
        else:
            if (filled < n).any():
                worst = int((filled < n).nonzero()[0])
                raise RuntimeError(
                    f"rejection sampling found only {int(filled[worst])} of {n} posterior draws "
                    f"for x = {rows[worst].tolist()} in {max_rounds} rounds; the observation is "
                    "very unlikely under the prior: use sample_posterior_grid"
                )
        return out.transpose(0, 1).to(_output_dtype(x))  # (n, m, 2), sample-major

    def _propose(
        self, rows: Tensor, k: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``k`` proposals per row, ``(t, k, 2)`` float64, and which are accepted ``(t, k)``."""
        u = self._noise((len(rows), k), generator)
        sign = torch.randint(0, 2, (len(rows), k), generator=generator).double() * 2 - 1
        s_abs = u[..., 0] + self.shift - rows[:, :1]
        d = rows[:, 1:] - u[..., 1]
        s = sign * s_abs
        theta = torch.stack(((s - d) / math.sqrt(2), (s + d) / math.sqrt(2)), dim=-1)
        ok = (s_abs >= 0) & (theta.abs() <= 1).all(-1)
        return theta, ok

    def __repr__(self) -> str:
        return f"TwoMoons(resolution={self.resolution})"


SIMULATORS = {"linear-gaussian": LinearGaussian, "two-moons": TwoMoons}

__all__ = ["SIMULATORS", "LinearGaussian", "Simulator", "TwoMoons"]
