r"""Checks of an amortized posterior $q(\theta \mid x)$ against the truth.

*Simulation-based calibration* (SBC; Talts et al. 2018) needs no true posterior: if
$\theta^* \sim p(\theta)$, $x^* \sim p(x \mid \theta^*)$ and
$\theta_1, \dots, \theta_L \sim q(\theta \mid x^*)$, then for $q = p(\theta \mid x)$
the rank of each coordinate of $\theta^*$ among the $L$ draws,

$$
r_j = \#\{\, l : \theta_{l,j} < \theta^*_j \,\} \in \{0, \dots, L\},
$$

is uniform on $\{0, \dots, L\}$. An over-confident posterior piles ranks at both ends
(a U shape), an under-confident one in the middle, a biased one on one side.
`sbc_ranks()` computes the ranks, `sbc_uniformity()` tests them with a chi-square test.
Uniform ranks are necessary, not sufficient: the prior itself, ignoring ``x``, passes.

Where the true posterior's moments are known, `posterior_errors()` measures how far
``q``'s are from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol

import torch
from scipy import stats
from torch import Tensor

SamplePosterior = Callable[[Tensor, int], Tensor]


class PriorSimulator(Protocol):
    """What `sbc_ranks()` needs of a simulator (see `flowforge.inference.simulators`)."""

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def sbc_ranks(
    sample_posterior: SamplePosterior,
    simulator: PriorSimulator,
    n_simulations: int = 500,
    n_posterior_samples: int = 99,
    seed: int = 0,
    batch_size: int = 1000,
) -> Tensor:
    r"""Simulation-based calibration ranks (Talts et al. 2018, algorithm 1).

    For $i = 1..N$: $\theta^*_i \sim p(\theta)$,
    $x^*_i \sim p(x \mid \theta^*_i)$, $L$ draws
    $\theta_{i,l} \sim q(\theta \mid x^*_i)$, and per coordinate
    $r_{ij} = \#\{l : \theta_{i,l,j} < \theta^*_{ij}\}$. Ties (possible only for a
    discrete ``q``) are broken at random, so the ranks are uniform for an exact ``q`` in any
    case.

    Args:
        sample_posterior: ``(x (m, x_dim), L) -> (L, m, theta_dim)``, e.g.
            ``lambda x, n: flow.sample(n, context=x)`` or a simulator's exact
            ``sample_posterior``. It is called with up to ``batch_size`` rows of ``x`` at once
            and, to be reproducible, under the global torch generator seeded with ``seed``
            (restored afterwards).
        simulator: has ``sample_prior(n, generator)`` and ``simulate(theta, generator)``.
        n_simulations: $N$.
        n_posterior_samples: $L$; the ranks take the $L + 1$ values ``0..L``.
        seed: seeds the prior, the simulations, ``sample_posterior`` and the tie-breaking.
        batch_size: simulations per call of ``sample_posterior``.

    Returns:
        The ranks, a ``LongTensor`` ``(N, theta_dim)``.
    """
    _check_count("n_simulations", n_simulations)
    _check_count("n_posterior_samples", n_posterior_samples)
    _check_count("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)
    theta = simulator.sample_prior(n_simulations, generator)
    x = simulator.simulate(theta, generator)
    ranks = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for start in range(0, n_simulations, batch_size):
                rows = x[start : start + batch_size]
                draws = sample_posterior(rows, n_posterior_samples)
                expected = (n_posterior_samples, len(rows), theta.shape[1])
                if tuple(draws.shape) != expected:
                    raise ValueError(
                        f"sample_posterior(x, {n_posterior_samples}) for x of shape "
                        f"{tuple(rows.shape)} must return shape {expected}, "
                        f"got {tuple(draws.shape)}"
                    )
                truth = theta[start : start + batch_size].double()
                draws = draws.detach().double().cpu()
                below = (draws < truth).sum(0)
                ties = (draws == truth).sum(0)
                if ties.any():
                    u = torch.rand(ties.shape, generator=generator, dtype=torch.float64)
                    below = below + torch.floor(u * (ties + 1)).long()
                ranks.append(below)
    return torch.cat(ranks)


def rank_bins(n_posterior_samples: int, bins: int) -> tuple[Tensor, Tensor]:
    r"""How the $L + 1$ rank values are grouped into ``bins`` bins, and the chance of
    each bin under uniform ranks.

    Rank $r$ goes to bin $\lfloor r \cdot B / (L + 1) \rfloor$, so bins hold
    equally many values when $B$ divides $L + 1$ (as for $L = 99$,
    $B = 20$: five values each) and differ by at most one value otherwise.

    Returns the bin of each rank value ``(L + 1,)`` (long) and the bin probabilities
    ``(bins,)`` (float64, summing to 1).
    """
    _check_count("n_posterior_samples", n_posterior_samples)
    _check_count("bins", bins)
    if bins > n_posterior_samples + 1:
        raise ValueError(
            f"bins must be at most n_posterior_samples + 1 = {n_posterior_samples + 1}, got {bins}"
        )
    index = torch.arange(n_posterior_samples + 1) * bins // (n_posterior_samples + 1)
    probability = torch.bincount(index, minlength=bins).double() / (n_posterior_samples + 1)
    return index, probability


class RankUniformity(NamedTuple):
    r"""The chi-square test of uniform SBC ranks, per coordinate (see `sbc_uniformity()`)."""

    statistic: Tensor  # (theta_dim,) float64
    p_value: Tensor  # (theta_dim,) float64
    counts: Tensor  # (theta_dim, bins) long
    expected: Tensor  # (bins,) float64


def sbc_uniformity(ranks: Tensor, n_posterior_samples: int, bins: int = 20) -> RankUniformity:
    r"""Pearson's chi-square test that each coordinate's ranks are uniform on ``0..L``.

    With $O_{jb}$ the number of the $N$ ranks of coordinate $j$ in bin
    $b$ (bins as in `rank_bins()`) and $E_b = N p_b$ its expectation under
    uniformity,

    $$
    \chi^2_j = \sum_{b=1}^{B} \frac{(O_{jb} - E_b)^2}{E_b}, \qquad
    p_j = P(\chi^2_{B-1} \ge \chi^2_j)
    $$

    (``scipy.stats.chi2.sf``). Keep $E_b \ge 5$ or so ($N \ge 100$ for 20 bins)
    for the chi-square approximation to hold. A small $p_j$ says the ranks of
    coordinate $j$ are not uniform, i.e. ``q`` is miscalibrated there.

    Args:
        ranks: ``(N, theta_dim)`` integers in ``0..L`` (from `sbc_ranks()`).
        n_posterior_samples: $L$.
        bins: $B$.

    Returns:
        `RankUniformity`: ``statistic`` and ``p_value`` ``(theta_dim,)``, ``counts``
        ``(theta_dim, bins)`` and ``expected`` ``(bins,)``.
    """
    index, probability = rank_bins(n_posterior_samples, bins)
    ranks = torch.as_tensor(ranks)
    if ranks.dim() == 1:
        ranks = ranks.unsqueeze(1)
    if ranks.dim() != 2 or len(ranks) == 0:
        raise ValueError(f"ranks must have shape (N, theta_dim) with N >= 1, got {ranks.shape}")
    ranks = ranks.long()
    if ranks.min() < 0 or ranks.max() > n_posterior_samples:
        raise ValueError(
            f"ranks must lie in 0..{n_posterior_samples}, got {int(ranks.min())}.."
            f"{int(ranks.max())}"
        )
    binned = index[ranks]  # (N, theta_dim)
    counts = torch.stack([torch.bincount(column, minlength=bins) for column in binned.T])
    expected = len(ranks) * probability
    statistic = ((counts.double() - expected) ** 2 / expected).sum(1)
    p_value = torch.from_numpy(stats.chi2.sf(statistic.numpy(), df=bins - 1))
    return RankUniformity(statistic, p_value.double(), counts, expected)


@dataclass(frozen=True)
class PosteriorErrors:
    r"""How far an approximate posterior's moments are from the true ones, averaged over
    $M$ observations (see `posterior_errors()`).

    Attributes:
        mean: $\frac1M \sum_i \|\hat\mu_i - \mu_i\|_2$, in the units of
            $\theta$.
        mean_std: $\frac1M \sum_i \sqrt{(\hat\mu_i - \mu_i)^\top \Sigma_i^{-1}
            (\hat\mu_i - \mu_i)}$, the mean's error in true posterior standard deviations
            (the Mahalanobis distance; in 1-D, $|\hat\mu - \mu| / \sigma$).
        cov: $\frac1M \sum_i \|\hat\Sigma_i - \Sigma_i\|_F / \|\Sigma_i\|_F$, the
            relative Frobenius error of the covariance.
        n: $M$.
    """

    mean: float
    mean_std: float
    cov: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean ``(m, d)`` and covariance ``(m, d, d)`` of ``samples`` ``(n, m, d)``, ``n`` draws
    for each of ``m`` observations (the layout of ``Flow.sample(n, context=x)``; the unbiased
    estimate, divided by $n - 1$), in float64."""
    samples = samples.detach().double().cpu()
    if samples.dim() != 3 or samples.shape[0] < 2:
        raise ValueError(
            f"samples must have shape (n, m, d) with n >= 2, got {tuple(samples.shape)}"
        )
    samples = samples.transpose(0, 1)  # (m, n, d)
    mean = samples.mean(1)
    centred = samples - mean.unsqueeze(1)
    return mean, centred.transpose(1, 2) @ centred / (samples.shape[1] - 1)


def posterior_errors(
    approximate: Tensor | tuple[Tensor, Tensor], true_mean: Tensor, true_cov: Tensor
) -> PosteriorErrors:
    r"""Errors of an approximate posterior's mean and covariance, averaged over observations.

    $$
    e_\mu = \frac1M \sum_i \|\hat\mu_i - \mu_i\|_2, \qquad
    e_{\mu/\sigma} = \frac1M \sum_i \big\|\Sigma_i^{-1/2}(\hat\mu_i - \mu_i)\big\|_2,
    \qquad
    e_\Sigma = \frac1M \sum_i \frac{\|\hat\Sigma_i - \Sigma_i\|_F}{\|\Sigma_i\|_F}
    $$

    All three are 0 for exact moments. Estimated from $n$ samples of the exact
    posterior they are not: then $E[e_{\mu/\sigma}^2] = d / n$ per observation, and
    $e_\Sigma$ is of order $\sqrt{2/n}$ for a Gaussian, a noise floor to compare
    with (e.g. with the errors of exact posterior samples).

    Args:
        approximate: samples ``(M, n, d)`` of the approximate posterior for each of the
            $M$ observations (e.g. ``flow.sample(n, context=x)``), or its moments
            ``(mean (M, d), cov (M, d, d))``.
        true_mean: $\mu_i$, ``(M, d)``.
        true_cov: $\Sigma_i$, ``(M, d, d)``, or ``(d, d)`` shared by all observations.

    Returns:
        `PosteriorErrors`.
    """
    if isinstance(approximate, tuple):
        mean, cov = (torch.as_tensor(v).detach().double().cpu() for v in approximate)
    else:
        mean, cov = sample_moments(approximate)
    true_mean = torch.as_tensor(true_mean).detach().double().cpu()
    true_cov = torch.as_tensor(true_cov).detach().double().cpu()
    if true_mean.dim() != 2:
        raise ValueError(f"true_mean must have shape (M, d), got {tuple(true_mean.shape)}")
    m, d = true_mean.shape
    true_cov = true_cov.expand(m, d, d)
    if mean.shape != (m, d) or cov.shape != (m, d, d):
        raise ValueError(
            f"the approximate moments have shapes {tuple(mean.shape)} and {tuple(cov.shape)}; "
            f"expected ({m}, {d}) and ({m}, {d}, {d}) to match the true ones"
        )
    difference = mean - true_mean
    scale = torch.linalg.cholesky(true_cov)
    white = torch.linalg.solve_triangular(scale, difference.unsqueeze(-1), upper=False)
    cov_error = torch.linalg.matrix_norm(cov - true_cov) / torch.linalg.matrix_norm(true_cov)
    return PosteriorErrors(
        mean=difference.norm(dim=1).mean().item(),
        mean_std=white.squeeze(-1).norm(dim=1).mean().item(),
        cov=cov_error.mean().item(),
        n=m,
    )


def _chi2_sf(statistic: Tensor, dof: int) -> Tensor:
    r"""$P(\chi^2_k \ge s) = Q(k/2, s/2)$ with the regularised upper incomplete gamma
    function (a scipy-free check of `sbc_uniformity()`'s p-values)."""
    statistic = torch.as_tensor(statistic, dtype=torch.float64)
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2)


__all__ = [
    "PosteriorErrors",
    "RankUniformity",
    "posterior_errors",
    "rank_bins",
    "sample_moments",
    "sbc_ranks",
    "sbc_uniformity",
]
