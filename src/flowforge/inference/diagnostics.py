r"""Diagnostics of a variational approximation $q$ (a flow) of an unnormalised target.

The target is any object with ``log_prob(z) -> (N,)``, the log of an unnormalised density
$\tilde p = Z p$, and ``log_normalizer() -> float | None``, $\log Z$ where it is
known. With draws $z_i \sim q$ and log-weights
$\log w_i = \log \tilde p(z_i) - \log q(z_i)$:

$$
\mathrm{ELBO} = E_q[\log w] \le \log Z, \qquad
KL(q \| p) = \log Z - \mathrm{ELBO}, \qquad
\hat Z = \tfrac1n \textstyle\sum_i w_i \ (E_q[\hat Z] = Z),

\mathrm{ESS} = (\textstyle\sum_i w_i)^2 / \sum_i w_i^2, \qquad
\hat k = \text{shape of a generalized Pareto fitted to the largest } w_i .
$$

The reverse KL is mode-seeking: a small KL, a stable $\hat Z$ and a high ESS say nothing
about modes of $p$ that $q$ never visits (no draw lands there, so no weight shows
it). Only $\log Z - \mathrm{ELBO}$ with the *true* $\log Z$ sees them. A large
$\hat k$ (> 0.7) says the weights have so heavy a tail that the importance-sampling
numbers are unreliable, which usually means that $q$ is too narrow somewhere.

Everything is computed in float64 from log-weights, normalised by their maximum before
exponentiating, so weights of any magnitude are fine. A weight of zero ($\log w = -\infty$,
``q`` puts mass where $\tilde p = 0$) is allowed; NaN or $+\infty$ raise
``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

KHAT_THRESHOLD = 0.7
"""Above this Pareto $\\hat k$, importance-sampling estimates are unreliable (PSIS)."""


@dataclass
class Diagnostics:
    r"""What `diagnose()` found, from ``n`` draws of $q$.

    ``elbo``, ``elbo_se``: $E_q[\log \tilde p - \log q]$ and its Monte Carlo standard
    error. ``log_z``, ``log_z_se``: the importance-sampling $\log \hat Z$ and its
    delta-method standard error. ``log_z_true``: the target's $\log Z$ or ``None``.
    ``kl``, ``kl_se``: $KL(q\|p) = \log Z - \mathrm{ELBO}$ (``None`` without the true
    $\log Z$). ``ess``, ``ess_fraction``: Kish's effective sample size and ``ess / n``.
    ``khat``: the Pareto shape of the weights' upper tail; ``khat_flag``: ``khat > 0.7`` or
    ``khat`` unknown (NaN).
    """

    n: int
    elbo: float
    elbo_se: float
    log_z: float
    log_z_se: float
    log_z_true: float | None
    kl: float | None
    kl_se: float | None
    ess: float
    ess_fraction: float
    khat: float
    khat_flag: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"Variational diagnostics from n = {self.n:,} draws of q",
            f"  ELBO          {self.elbo:.5f} +- {self.elbo_se:.5f}",
            f"  log Z (IS)    {self.log_z:.5f} +- {self.log_z_se:.5f}",
        ]
        if self.log_z_true is not None:
            lines.append(f"  log Z (true)  {self.log_z_true:.5f}")
        if self.kl is not None:
            lines.append(f"  KL(q||p)      {self.kl:.5f} +- {self.kl_se:.5f}  (log Z - ELBO)")
        else:
            lines.append(
                f"  KL(q||p)      unknown (no true log Z); log Z (IS) - ELBO = "
                f"{self.log_z - self.elbo:.5f} estimates it only if k-hat is small"
            )
        lines += [
            f"  ESS           {self.ess:,.1f} ({100 * self.ess_fraction:.2f}% of n)",
            f"  Pareto k-hat  {self.khat:.3f}",
            "  " + _khat_verdict(self.khat),
        ]
        if self.elbo == -math.inf:
            lines.append(
                "  Some draws of q have p~ = 0 (log-weight -inf): KL(q||p) is infinite and "
                "the ELBO is -inf."
            )
        return "\n".join(lines)


def _khat_verdict(khat: float) -> str:
    """One sentence on what a Pareto $\\hat k$ means for importance sampling."""
    if math.isnan(khat):
        return (
            "FLAG: k-hat could not be estimated (fewer than 21 draws); treat the "
            "importance-sampling numbers as unreliable."
        )
    if khat > KHAT_THRESHOLD:
        return (
            f"FLAG: k-hat > {KHAT_THRESHOLD}: the weights are so heavy-tailed that log Z (IS) "
            "and the ESS are unreliable (their errors are far larger than the s.e. shown), "
            "and q is too narrow somewhere: it misses mass of p, which the ELBO and a small "
            "KL(q||p) do not reveal."
        )
    if khat > 0.5:
        return (
            "k-hat in (0.5, 0.7]: the weights have infinite variance; importance-sampling "
            "estimates are usable but converge slowly, and their s.e. are optimistic."
        )
    return (
        "k-hat <= 0.5: the weights have finite variance; importance-sampling estimates and "
        "their s.e. are trustworthy. (Modes of p that q never visits remain invisible.)"
    )


def _log_weights(log_weights: Tensor) -> Tensor:
    """Log-weights as a float64 CPU vector ``(n,)``; NaN or ``+inf`` raise ``ValueError``."""
    lw = torch.as_tensor(log_weights).detach().to("cpu", torch.float64)
    if lw.dim() != 1 or lw.numel() == 0:
        raise ValueError(f"log_weights must be a non-empty vector (n,), got {tuple(lw.shape)}")
    nan = int(torch.isnan(lw).sum())
    if nan:
        raise ValueError(
            f"log_weights contain {nan} NaN values of {lw.numel()}; expected numbers or -inf "
            "(log p~(z) - log q(z) is NaN where both are infinite or an input was NaN)"
        )
    pos_inf = int((lw == math.inf).sum())
    if pos_inf:
        raise ValueError(
            f"log_weights contain {pos_inf} values of +inf of {lw.numel()}; an infinite weight "
            "(log q(z) = -inf at a draw of q, e.g. float32 underflow) makes every estimate "
            "meaningless"
        )
    return lw


def _require_some_mass(lw: Tensor) -> None:
    if lw.max() == -math.inf:
        raise ValueError(
            f"all {lw.numel()} weights are zero (log-weight -inf): q put no draw where p~ > 0"
        )


def importance_log_z(log_weights: Tensor) -> tuple[float, float]:
    r"""The importance-sampling estimate of $\log Z$ and its standard error.

    $$
    \log \hat Z = \log \tfrac1n \textstyle\sum_i w_i
    = \mathrm{logsumexp}(\log w) - \log n, \qquad
    \mathrm{se} = \frac{\mathrm{sd}(w)}{\sqrt n\ \bar w}
    $$

    the delta method's $\mathrm{se}(\log \bar w) \approx \mathrm{se}(\bar w) / \bar w$,
    with the sample standard deviation (``n - 1``) of the weights; both are invariant to a
    common factor of the weights, so they are computed from $w_i / \max_j w_j$. The
    standard error is meaningful only when the weights have finite variance
    (`pareto_khat()` $\le 0.5$).

    Args:
        log_weights: $\log w_i$, ``(n,)`` with ``n >= 2``; ``-inf`` is a weight of 0.

    Raises:
        ValueError: NaN or ``+inf`` log-weights, fewer than 2 of them, or all weights 0.
    """
    lw = _log_weights(log_weights)
    n = lw.numel()
    if n < 2:
        raise ValueError("importance_log_z needs at least 2 log-weights for a standard error")
    _require_some_mass(lw)
    log_z = torch.logsumexp(lw, 0) - math.log(n)
    w = torch.exp(lw - lw.max())
    se = w.std() / (math.sqrt(n) * w.mean())
    return log_z.item(), se.item()


def kish_ess(log_weights: Tensor) -> float:
    r"""Kish's effective sample size $(\sum_i w_i)^2 / \sum_i w_i^2$, in ``[1, n]``.

    Computed as $\exp(2\,\mathrm{logsumexp}(\log w) - \mathrm{logsumexp}(2 \log w))$;
    ``n`` for equal weights, 1 when one weight dominates, 0 if all weights are 0.

    Args:
        log_weights: $\log w_i$, ``(n,)``; ``-inf`` is a weight of 0.

    Raises:
        ValueError: NaN or ``+inf`` log-weights.
    """
    lw = _log_weights(log_weights)
    if lw.max() == -math.inf:
        return 0.0
    return math.exp((2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)).item())


def tail_size(n: int) -> int:
    r"""The number of largest weights the Pareto fit uses: $M = \lceil\min(n/5,
    3\sqrt n)\rceil$ (PSIS, Vehtari et al. 2024, with relative efficiency 1)."""
    return math.ceil(min(n / 5, 3 * math.sqrt(n)))


def pareto_khat(log_weights: Tensor) -> float:
    r"""The Pareto shape $\hat k$ of the upper tail of the weights, as in PSIS.

    The tail is the $M =$ `tail_size()` largest weights; their exceedances over the
    $(M+1)$-th largest, $x_i = w_{(i)} - w_{(M+1)} \ge 0$, are fitted with a
    generalized Pareto distribution (GPD), $P(X > x) = (1 + k x / \sigma)^{-1/k}$, whose
    shape $k$ governs the weights' moments: $E[w^r] < \infty$ iff $r < 1/k$.

    The fit is the empirical-Bayes estimator of Zhang & Stephens (2009). In
    $\theta = -k/\sigma$ the GPD log-likelihood, maximised over ``k`` for fixed
    $\theta$, is

    $$
    \ell(\theta) = M\big(\log(\theta / \kappa(\theta)) + \kappa(\theta) - 1\big), \qquad
    \kappa(\theta) = -\tfrac1M \textstyle\sum_i \log(1 - \theta x_i)
    $$

    (their sign convention: $\kappa = -k$). $\theta$ is averaged over the grid
    $\theta_j = 1/x_{(M)} + \big(1 - \sqrt{m/(j - 1/2)}\big) / (3 x^*)$,
    $j = 1..m$, $m = 20 + \lfloor\sqrt M\rfloor$, $x^*$ the first quartile
    $x_{(\lfloor M/4 + 1/2\rfloor)}$ of the ascending exceedances, with weights
    $\propto e^{\ell(\theta_j)}$, giving $\hat\theta$; then
    $\hat k = \frac1M \sum_i \log(1 - \hat\theta x_i)$. Finally, as in PSIS, it is pulled
    toward 0.5 by a weakly informative prior worth 10 observations:

    $$
    \hat k \leftarrow \frac{M \hat k + 10 \cdot 0.5}{M + 10}
    $$

    Reading: $\hat k \le 0.5$ finite variance, importance sampling fine; ``(0.5, 0.7]``
    infinite variance but usable; $> 0.7$ unreliable. If $\log w$ is exactly
    $\log$ of GPD draws, the tail of a GPD is again a GPD of the same shape, so the
    estimate is the true ``k`` (up to noise of about $(1 + k)/\sqrt M$ and the prior).

    Special cases: NaN when $M < 5$ (``n < 21``: too few draws to fit a tail); ``-inf``
    when the $M + 1$ largest weights are all equal (no tail at all, bounded weights).
    Tied weights otherwise enter as zero exceedances (with $x^*$ the smallest positive
    exceedance if the quartile is 0).

    Args:
        log_weights: $\log w_i$, ``(n,)``; ``-inf`` is a weight of 0.

    Raises:
        ValueError: NaN or ``+inf`` log-weights, or all weights 0.
    """
    lw = _log_weights(log_weights)
    _require_some_mass(lw)
    m = tail_size(lw.numel())
    if m < 5:
        return math.nan
    top = torch.sort(lw, descending=True).values[: m + 1]
    threshold, tail = top[-1], top[:-1].flip(0)  # tail ascending
    # exp(tail - max) - exp(threshold - max) without cancellation; 0 where the tail is -inf.
    excess = torch.exp(tail - top[0]) * -torch.expm1(threshold - tail)
    excess = torch.where(tail > threshold, excess, torch.zeros_like(excess))
    if excess[-1] <= 0:
        return -math.inf
    k = _gpd_shape(excess)
    return (m * k + 10 * 0.5) / (m + 10)


def _gpd_shape(x: Tensor) -> float:
    """Zhang & Stephens' (2009) estimate of the GPD shape ``k`` (``k > 0``: heavy tail) from
    ascending exceedances ``x`` ``(M,)``, ``x >= 0``, ``x[-1] > 0``; see `pareto_khat()`."""
    size = x.numel()
    x_star = x[math.floor(size / 4 + 0.5) - 1]
    if x_star <= 0:
        x_star = x[x > 0][0]
    grid = 20 + math.floor(math.sqrt(size))
    j = torch.arange(1, grid + 1, dtype=torch.float64)
    theta = 1 / x[-1] + (1 - torch.sqrt(grid / (j - 0.5))) / (3 * x_star)
    kappa = -torch.log1p(-theta[:, None] * x).mean(1)
    # theta / kappa -> 1 / mean(x) as theta -> 0
    ratio = torch.where(theta == 0, 1 / x.mean(), theta / kappa)
    profile = size * (torch.log(ratio) + kappa - 1)
    theta_hat = (torch.softmax(profile, 0) * theta).sum()
    return torch.log1p(-theta_hat * x).mean().item()


def _device(flow: Any) -> torch.device:
    device = getattr(flow, "device", None)
    if device is None and hasattr(flow, "parameters"):
        device = next(iter(flow.parameters()), torch.empty(0)).device
    return torch.device(device or "cpu")


def _batch_log_weights(log_p: Tensor, log_q: Tensor, m: int) -> Tensor:
    """``log p~ - log q`` of one batch, float64 on the CPU, with the culprit named on failure."""
    for name, values in (("target.log_prob(z)", log_p), ("log q from the flow", log_q)):
        if tuple(values.shape) != (m,):
            raise ValueError(f"{name} must have shape ({m},), got {tuple(values.shape)}")
    log_p, log_q = log_p.to("cpu", torch.float64), log_q.to("cpu", torch.float64)
    bad_q = int((~torch.isfinite(log_q)).sum())
    if bad_q:
        raise ValueError(
            f"the flow returned {bad_q} non-finite log q values (NaN or +-inf) for its own "
            "draws; a float32 flow may under- or overflow there (try flow.double())"
        )
    bad_p = int((torch.isnan(log_p) | (log_p == math.inf)).sum())
    if bad_p:
        raise ValueError(
            f"target.log_prob returned {bad_p} NaN or +inf values at draws of q; expected "
            "finite numbers, or -inf where the target density is 0"
        )
    return log_p - log_q


def _draw_log_weights(flow: Any, target: Any, n: int, batch_size: int, seed: int | None) -> Tensor:
    """``n`` log-weights from draws of ``flow`` in batches, without gradients, seeded (the
    global random state is restored afterwards)."""
    device = _device(flow)
    kwargs: dict[str, Any] = {"devices": []}
    if device.type != "cpu":
        count = getattr(torch, device.type).device_count()
        kwargs = {"devices": list(range(count)), "device_type": device.type}
    chunks = []
    with torch.random.fork_rng(enabled=seed is not None, **kwargs), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z, log_q = flow.sample_and_log_prob(m)
            chunks.append(_batch_log_weights(target.log_prob(z), log_q, m))
    return torch.cat(chunks)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def diagnose(
    flow: Any,
    target: Any,
    n: int = 100_000,
    batch_size: int = 10_000,
    seed: int | None = 0,
) -> Diagnostics:
    r"""Diagnose ``flow`` as a variational approximation $q$ of ``target``.

    Draws ``n`` samples $z_i \sim q$ with ``flow.sample_and_log_prob`` (batches of
    ``batch_size``, under ``torch.no_grad()``, in the flow's dtype and device) and computes
    from $\log w_i = \log\tilde p(z_i) - \log q(z_i)$ in float64:

    $$
    \mathrm{ELBO} = \overline{\log w}, \quad \mathrm{se} = \mathrm{sd}(\log w)/\sqrt n;
    \qquad KL(q\|p) = \log Z - \mathrm{ELBO} \ (\text{same se});
    $$

    `importance_log_z()`, `kish_ess()` and `pareto_khat()`. If some draw has
    $\tilde p(z_i) = 0$, the ELBO is $-\infty$ and the KL $+\infty$, both
    exactly (standard error 0): ``q`` has mass where ``p`` has none.

    Args:
        flow: $q$; anything with ``sample_and_log_prob(m) -> (z (m, d), log q (m,))``.
        target: $\tilde p$; ``log_prob(z) -> (m,)`` and ``log_normalizer() -> float |
            None`` (the true $\log Z$; a target without the method counts as unknown).
        n: number of draws (>= 2; $\hat k$ needs >= 21).
        batch_size: draws per batch.
        seed: seeds the draws, leaving the global random state as it was; ``None`` draws from
            the global generator.

    Raises:
        ValueError: bad ``n`` / ``batch_size``; NaN or non-finite ``log q``; NaN or ``+inf``
            ``log p~``; all weights 0.
    """
    _check_count("n", n, 2)
    _check_count("batch_size", batch_size, 1)
    lw = _draw_log_weights(flow, target, n, batch_size, seed)
    _require_some_mass(lw)
    if torch.isfinite(lw).all():
        elbo, elbo_se = lw.mean().item(), lw.std().item() / math.sqrt(n)
    else:
        elbo, elbo_se = -math.inf, 0.0
    log_z, log_z_se = importance_log_z(lw)
    log_normalizer = getattr(target, "log_normalizer", None)
    log_z_true = log_normalizer() if log_normalizer is not None else None
    kl = kl_se = None
    if log_z_true is not None:
        log_z_true = float(log_z_true)
        kl, kl_se = log_z_true - elbo, elbo_se
    ess = kish_ess(lw)
    khat = pareto_khat(lw)
    return Diagnostics(
        n=n,
        elbo=elbo,
        elbo_se=elbo_se,
        log_z=log_z,
        log_z_se=log_z_se,
        log_z_true=log_z_true,
        kl=kl,
        kl_se=kl_se,
        ess=ess,
        ess_fraction=ess / n,
        khat=khat,
        khat_flag=not khat <= KHAT_THRESHOLD,
    )
