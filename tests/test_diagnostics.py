"""Variational diagnostics against closed forms: Gaussians, a missed mode, Pareto tails.

Expected values are derived by hand in the comments, never taken from the code's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import genpareto

import flowforge as ff
from flowforge.inference.diagnostics import (
    Diagnostics,
    diagnose,
    importance_log_z,
    kish_ess,
    pareto_khat,
)
from flowforge.transforms import Planar

LOG_2PI = math.log(2 * math.pi)


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def gaussian_flow(mean, std, dtype=torch.float64) -> ff.Flow:
    """A planar flow whose density is exactly N(mean, diag(std^2)) in 2-D: its one planar
    layer is the identity (u = log(e - 1) w / |w|^2 makes u_hat = 0) on a DiagNormal base."""
    flow = ff.models.planar(dim=2, layers=1, base="diag-normal").to(dtype)
    (layer,) = [m for m in flow.modules() if isinstance(m, Planar)]
    with torch.no_grad():
        layer.w.copy_(torch.tensor([0.7, -1.3]))
        layer.u.copy_(math.log(math.e - 1) * layer.w / (layer.w @ layer.w))
        layer.b.fill_(0.4)
        flow.base.loc.copy_(torch.tensor(mean, dtype=torch.float64))
        flow.base.log_scale.copy_(torch.tensor(std, dtype=torch.float64).log())
    return flow


class Gaussian:
    """p~(z) = Z N(z; mean, diag(std^2)), log Z known."""

    def __init__(self, mean, std, log_z: float | None) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float64)
        self.std = torch.tensor(std, dtype=torch.float64)
        self.log_z = log_z

    def log_prob(self, z):
        e = (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)
        log_n = (-0.5 * e * e - self.std.to(z.dtype).log() - 0.5 * LOG_2PI).sum(-1)
        return log_n + (self.log_z or 0.0)

    def log_normalizer(self):
        return self.log_z


class TwoModes:
    """p~(z) = Z (N(z; m, I) + N(z; -m, I)) / 2 in 2-D."""

    def __init__(self, m, log_z: float) -> None:
        self.m = torch.tensor(m, dtype=torch.float64)
        self.log_z = log_z

    def log_prob(self, z):
        a = -0.5 * ((z - self.m) ** 2).sum(-1)
        b = -0.5 * ((z + self.m) ** 2).sum(-1)
        return torch.logaddexp(a, b) + math.log(0.5) - LOG_2PI + self.log_z

    def log_normalizer(self):
        return self.log_z


def gaussian_kl(s_q: float, s_p: float, dim: int) -> float:
    """KL(N(mu, s_q^2 I) || N(mu, s_p^2 I))."""
    return dim * (math.log(s_p / s_q) + s_q**2 / (2 * s_p**2) - 0.5)


# (1) q = p exactly


def test_exact_q_gives_zero_kl_exact_log_z_full_ess():
    mean, std, log_z = [1.0, -2.0], [0.5, 2.0], 1.7
    d = diagnose(gaussian_flow(mean, std), Gaussian(mean, std, log_z), n=50_000)
    # every log-weight is log Z up to rounding
    assert d.n == 50_000 and d.log_z_true == log_z
    assert abs(d.elbo - log_z) < 1e-12 and d.elbo_se < 1e-12
    assert abs(d.kl) < 1e-12 + 4 * d.kl_se
    assert abs(d.log_z - log_z) < 1e-12 and d.log_z_se < 1e-12
    assert d.ess == pytest.approx(50_000, rel=1e-12) and d.ess_fraction == pytest.approx(1.0)
    assert d.khat < 0.5 and not d.khat_flag


# (2) q narrower than p: heavy-tailed weights


def test_narrow_q_kl_is_the_gaussian_kl_and_khat_is_the_analytic_pareto_shape():
    # q = N(0, s^2 I), p = N(0, I) in 2-D. w = p/q ∝ exp(z^2 (1/s^2 - 1) / 2), and
    # Y = |z|^2 / s^2 ~ chi^2_2 = Exp(mean 2), so w ∝ exp(a Y) with a = (1 - s^2)/2:
    # P(w > t) ∝ t^(-1/(2a)) exactly, a Pareto tail of shape k = 2a = 1 - s^2.
    # Its exceedances over any threshold are exactly GPD(k): k = 0.75 for s = 0.5.
    s, log_z = 0.5, -0.3
    target = Gaussian([0.0, 0.0], [1.0, 1.0], log_z)
    runs = [diagnose(gaussian_flow([0.0, 0.0], [s, s]), target, seed=seed) for seed in range(6)]
    kl = gaussian_kl(s, 1.0, 2)  # 2 (log 2 + 1/8 - 1/2) = 0.63629
    for d in runs:
        assert abs(d.kl - kl) < 4 * d.kl_se
        assert d.khat > 0.5  # E[w^2] = inf: the ESS is meaningless, and small
        assert d.ess_fraction < 0.05
    # each k-hat has s.d. about (1 + k) / sqrt(M) = 0.057 (M = 949); the mean of 6, 0.023
    assert abs(np.mean([d.khat for d in runs]) - (1 - s**2)) < 0.07
    # s = 1/3: k = 8/9, flagged
    narrower = gaussian_flow([0.0, 0.0], [1 / 3, 1 / 3])
    for seed in range(3):
        d = diagnose(narrower, target, seed=seed)
        assert d.khat_flag and d.khat > 0.7
        assert "FLAG" in str(d)


# (3) q covers one of two modes


def test_missing_mode_costs_log_2_and_is_invisible_to_importance_sampling():
    # p = (N(m, I) + N(-m, I)) / 2 with |m| = 5, q = N(m, 0.8^2 I). The other mode adds
    # log(1 + e^(-2 z.m)) ~ e^-50 to log p at draws of q, so
    #   KL(q||p) = log 2 + KL(q || N(m, I)),   E_q[w] = Z / 2,
    #   ESS / n -> E_q[w]^2 / E_q[w^2] = (2 - 1/s^2) / s^2 (per dimension, squared) = 0.6836,
    #   and the weights' tail is Pareto with k = 1 - s^2 = 0.36 (as in the test above).
    s, log_z = 0.8, 2.0
    d = diagnose(gaussian_flow([5.0, 0.0], [s, s]), TwoModes([5.0, 0.0], log_z))
    kl = math.log(2) + gaussian_kl(s, 1.0, 2)
    assert abs(d.kl - kl) < 4 * d.kl_se and d.kl > math.log(2)
    # importance sampling is confidently wrong by log 2, and nothing flags it
    assert abs(d.log_z - (log_z - math.log(2))) < 4 * d.log_z_se
    assert d.ess_fraction == pytest.approx((2 - 1 / s**2) / s**2, abs=0.03)
    assert abs(d.khat - (1 - s**2)) < 0.2 and not d.khat_flag


# (4) k-hat recovers the shape of a generalized Pareto


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8])
def test_pareto_khat_recovers_gpd_shape(k):
    # The fit uses the M = 300 largest of n = 10,000 draws over the 301st: exceedances of a
    # GPD(k) over a threshold are again GPD(k) (scale sigma + k u), so the estimate is k up
    # to noise of s.d. about (1 + k) / sqrt(300) <= 0.1 and the prior's pull toward 0.5 of
    # (k - 0.5) * 10 / 310 <= 0.01.
    estimates = []
    for seed in range(8):
        x = genpareto.rvs(k, size=10_000, random_state=np.random.default_rng(seed))
        estimates.append(pareto_khat(torch.from_numpy(np.log(x))))
    assert all(abs(e - k) < 0.35 for e in estimates)
    assert abs(np.mean(estimates) - k) < 0.1  # s.d. of the mean <= 0.036


@pytest.mark.parametrize("k", [0.0, 1.0])
def test_pareto_khat_prior_pulls_small_tails_toward_half(k):
    # n = 100: M = min(20, 30) = 20 exceedances and a prior worth 10 observations at 0.5,
    # so the average estimate is (20 k + 5) / 30 (1/6 and 5/6), up to the Zhang-Stephens
    # estimator's own small-sample bias (a few hundredths); without the prior it would be
    # near k itself, 1/6 away. Mean of 300 replicates: s.d. <= 0.016.
    estimates = [
        pareto_khat(torch.from_numpy(np.log(genpareto.rvs(k, size=100, random_state=seed))))
        for seed in range(300)
    ]
    assert abs(np.mean(estimates) - (20 * k + 5) / 30) < 0.07


def test_pareto_khat_of_light_tails_and_special_cases():
    rng = np.random.default_rng(1)
    # weights uniform on (0, 1): a GPD with k = -1
    assert pareto_khat(torch.from_numpy(np.log(rng.uniform(size=10_000)))) < -0.5
    # exponential weights: k = 0
    assert abs(pareto_khat(torch.from_numpy(np.log(rng.exponential(size=10_000))))) < 0.2
    # the estimate depends on the weights only up to a common factor
    lw = torch.from_numpy(np.log(genpareto.rvs(0.5, size=2000, random_state=rng)))
    assert pareto_khat(lw + 800.0) == pytest.approx(pareto_khat(lw), abs=1e-9)
    assert pareto_khat(lw - 800.0) == pytest.approx(pareto_khat(lw), abs=1e-9)
    # M = ceil(min(n/5, 3 sqrt(n))) < 5 for n <= 20: no estimate
    assert math.isnan(pareto_khat(torch.randn(20, dtype=torch.float64)))
    assert math.isfinite(pareto_khat(torch.randn(21, dtype=torch.float64)))
    # equal weights: no upper tail at all
    assert pareto_khat(torch.zeros(1000)) == -math.inf


# (5) hand-computable examples


def test_importance_log_z_by_hand():
    # w = (1, 3): mean 2, sample s.d. sqrt(2), se = sqrt(2) / (sqrt(2) * 2) = 0.5
    for offset in (0.0, 1000.0, -1000.0):  # stable far outside exp's range
        log_z, se = importance_log_z(vec(0.0, math.log(3.0)) + offset)
        assert log_z == pytest.approx(math.log(2) + offset, abs=1e-12)
        assert se == pytest.approx(0.5, abs=1e-12)
    # w = (1, 1, 0): mean 2/3; s.d. sqrt(1/3); se = sqrt(1/3) / (sqrt(3) 2/3) = 1/2
    log_z, se = importance_log_z(vec(0.0, 0.0, -math.inf))
    assert log_z == pytest.approx(math.log(2 / 3), abs=1e-12)
    assert se == pytest.approx(0.5, abs=1e-12)
    # equal weights: exact, s.e. 0
    assert importance_log_z(torch.full((7,), 2.5)) == pytest.approx((2.5, 0.0), abs=1e-12)


def test_kish_ess_by_hand():
    assert kish_ess(torch.zeros(4)) == pytest.approx(4.0)
    assert kish_ess(vec(0.0, math.log(3.0)) + 900.0) == pytest.approx(16 / 10)
    assert kish_ess(vec(0.0, 0.0, -math.inf) - 900.0) == pytest.approx(2.0)
    assert kish_ess(vec(0.0, -1000.0)) == pytest.approx(1.0)
    assert kish_ess(vec(-math.inf, -math.inf)) == 0.0


# (6) non-finite log-weights


@pytest.mark.parametrize("function", [importance_log_z, kish_ess, pareto_khat])
def test_nan_or_plus_inf_log_weights_raise(function):
    lw = torch.randn(100, dtype=torch.float64)
    lw[3] = math.nan
    with pytest.raises(ValueError, match="1 NaN"):
        function(lw)
    lw[3] = math.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        function(lw)


@pytest.mark.parametrize("function", [importance_log_z, pareto_khat])
def test_all_zero_weights_raise(function):
    with pytest.raises(ValueError, match="all 50 weights are zero"):
        function(torch.full((50,), -math.inf))


class Spoiled(Gaussian):
    """A standard Gaussian target that returns ``value`` where ``z[:, 0] > cut``."""

    def __init__(self, value: float, cut: float = 1.0) -> None:
        super().__init__([0.0, 0.0], [1.0, 1.0], 0.0)
        self.value, self.cut = value, cut

    def log_prob(self, z):
        return torch.where(z[:, 0] > self.cut, self.value, super().log_prob(z))


def test_diagnose_raises_on_nan_target_and_names_it():
    with pytest.raises(ValueError, match=r"target\.log_prob returned .* NaN"):
        diagnose(gaussian_flow([0.0, 0.0], [1.0, 1.0]), Spoiled(math.nan), n=1000)


def test_zero_target_density_gives_infinite_kl_not_nan():
    # p~ = 0 on z_0 > 1, where q = N(0, I) has mass 0.159: KL(q||p) = inf exactly.
    # The other draws still give IS: E_q[w] = P_q(z_0 <= 1) = Phi(1) = 0.8413.
    d = diagnose(gaussian_flow([0.0, 0.0], [1.0, 1.0]), Spoiled(-math.inf), n=20_000)
    assert d.elbo == -math.inf and d.kl == math.inf and d.kl_se == 0.0
    assert d.log_z == pytest.approx(math.log(0.841345), abs=4 * d.log_z_se)
    assert d.ess_fraction == pytest.approx(0.841345, abs=0.02)
    # weights are 0 or 1 (up to rounding): a light upper tail
    assert d.khat < 0.5 and not d.khat_flag
    assert "infinite" in str(d)


# diagnose's plumbing


def test_diagnose_is_seeded_restores_rng_and_batches_do_not_matter():
    flow, target = gaussian_flow([0.0, 0.0], [0.7, 0.7]), Gaussian([0.0, 0.0], [1, 1], None)
    state = torch.get_rng_state()
    a = diagnose(flow, target, n=5000, batch_size=1000, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = diagnose(flow, target, n=5000, batch_size=5000, seed=3)
    c = diagnose(flow, target, n=5000, batch_size=1000, seed=4)
    assert a.as_dict() == b.as_dict() != c.as_dict()
    # unknown log Z: no KL, said in words
    assert a.log_z_true is None and a.kl is None and a.kl_se is None
    assert "unknown" in str(a)
    assert isinstance(a, Diagnostics) and set(a.as_dict()) >= {"elbo", "khat", "ess_fraction"}


def test_diagnose_float32_flow():
    # q = N(0, 0.8^2 I) in float32: the ELBO is still the closed form, computed in float64
    s = 0.8
    d = diagnose(gaussian_flow([0.0, 0.0], [s, s], torch.float32), Gaussian([0, 0], [1, 1], 0.0))
    assert abs(d.kl - gaussian_kl(s, 1.0, 2)) < 4 * d.kl_se
    assert isinstance(d.elbo, float)


def test_diagnose_rejects_bad_arguments():
    flow, target = gaussian_flow([0.0, 0.0], [1.0, 1.0]), Gaussian([0, 0], [1, 1], 0.0)
    for kwargs in ({"n": 1}, {"n": 10.0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be an integer"):
            diagnose(flow, target, **kwargs)
