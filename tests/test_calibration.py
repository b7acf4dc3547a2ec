"""Simulation-based calibration and posterior errors: they pass the exact posterior and fail
wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.image import imread
from scipy import stats

from flowforge import plots
from flowforge.inference.calibration import (
    _chi2_sf,
    posterior_errors,
    rank_bins,
    sample_moments,
    sbc_ranks,
    sbc_uniformity,
)
from flowforge.inference.simulators import LinearGaussian, TwoMoons

SIMULATOR = LinearGaussian(theta_dim=2, x_dim=3, noise=0.5, seed=0)


def gaussian_posterior(scale: float = 1.0, shift: float = 0.0):
    """The exact linear-Gaussian posterior with its spread scaled by ``scale`` and its mean
    moved by ``shift`` posterior standard deviations in every coordinate."""

    def sample(x: torch.Tensor, n: int) -> torch.Tensor:
        mean, cov = SIMULATOR.posterior(x.double())
        factor = torch.linalg.cholesky(cov)
        z = torch.randn(len(x), n, 2, dtype=torch.float64).transpose(0, 1)  # (n, m, 2)
        return mean + shift * cov.diagonal().sqrt() + scale * z @ factor.T

    return sample


def test_ranks_shape_range_and_reproducibility():
    ranks = sbc_ranks(SIMULATOR.sample_posterior, SIMULATOR, 300, 49, seed=1, batch_size=64)
    assert ranks.shape == (300, 2) and ranks.dtype == torch.long
    assert ranks.min() >= 0 and ranks.max() <= 49
    before = torch.get_rng_state()
    again = sbc_ranks(SIMULATOR.sample_posterior, SIMULATOR, 300, 49, seed=1, batch_size=300)
    assert torch.equal(ranks, again)  # the batch size does not matter with a seeded sampler
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    flow_like = gaussian_posterior()  # draws from the global generator, seeded by sbc_ranks
    assert torch.equal(
        sbc_ranks(flow_like, SIMULATOR, 100, 9, seed=2), sbc_ranks(flow_like, SIMULATOR, 100, 9, 2)
    )


def test_ranks_reject_a_sampler_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"must return shape \(5, 10, 2\)"):
        sbc_ranks(lambda x, n: torch.zeros(n, len(x)), SIMULATOR, 10, 5)
    with pytest.raises(ValueError, match=r"must return shape \(5, 10, 2\)"):  # the old layout
        sbc_ranks(lambda x, n: torch.zeros(len(x), n, 2), SIMULATOR, 10, 5)


def test_exact_posterior_gives_uniform_ranks():
    ranks = sbc_ranks(SIMULATOR.sample_posterior, SIMULATOR, 1000, 99, seed=0)
    test = sbc_uniformity(ranks, 99, bins=20)
    assert test.counts.shape == (2, 20) and test.counts.sum(1).tolist() == [1000, 1000]
    assert (test.p_value > 0.01).all(), test.p_value
    # the mean rank is L/2 = 49.5, with standard error sqrt((101^2 - 1)/12 / 1000) = 0.92
    assert ranks.double().mean(0).sub(49.5).abs().max() < 3.5


def test_exact_two_moons_posterior_gives_uniform_ranks():
    simulator = TwoMoons()
    ranks = sbc_ranks(simulator.sample_posterior, simulator, 500, 99, seed=0)
    assert (sbc_uniformity(ranks, 99).p_value > 0.01).all()


@pytest.mark.parametrize(
    ("scale", "shift", "shape"),
    [(0.6, 0.0, "U"), (1.6, 0.0, "hump"), (1.0, 0.5, "slope")],
)
def test_wrong_posteriors_give_non_uniform_ranks(scale, shift, shape):
    """Over-confident: ranks pile at both ends; under-confident: in the middle; biased: on
    one side (a mean too high puts theta* below most draws, so ranks are low)."""
    ranks = sbc_ranks(gaussian_posterior(scale, shift), SIMULATOR, 1000, 99, seed=0)
    test = sbc_uniformity(ranks, 99, bins=20)
    assert (test.p_value < 1e-6).all(), test.p_value
    counts = test.counts.double()
    ends, middle = counts[:, [0, -1]].mean(1), counts[:, 8:12].mean(1)
    if shape == "U":
        assert (ends > 2 * middle).all()
    elif shape == "hump":
        assert (middle > 2 * ends).all()
    else:
        assert (counts[:, :10].sum(1) > counts[:, 10:].sum(1) + 200).all()


def test_rank_bins_when_bins_do_not_divide_the_rank_values():
    index, probability = rank_bins(n_posterior_samples=9, bins=4)  # ten values in four bins
    assert index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    torch.testing.assert_close(probability, torch.tensor([0.3, 0.2, 0.3, 0.2]).double())
    with pytest.raises(ValueError, match="at most"):
        rank_bins(9, 11)


def test_uniformity_statistic_and_p_value():
    perfect = torch.arange(100).repeat(3).unsqueeze(1)  # every rank value three times
    test = sbc_uniformity(perfect, 99, bins=20)
    assert test.statistic.item() == 0.0 and test.p_value.item() == pytest.approx(1.0)
    skewed = torch.cat((perfect, torch.zeros(60, 1, dtype=torch.long)))
    test = sbc_uniformity(skewed, 99, bins=20)
    # by hand: bin 0 holds 15 + 60 = 75 of 360, the others 15; E = 18
    expected = (75 - 18) ** 2 / 18 + 19 * (15 - 18) ** 2 / 18
    assert test.statistic.item() == pytest.approx(expected)
    assert test.p_value.item() == pytest.approx(stats.chi2.sf(expected, 19))
    assert test.p_value.item() == pytest.approx(_chi2_sf(torch.tensor(expected), 19).item())
    assert test.p_value.item() < 1e-20
    with pytest.raises(ValueError, match=r"0\.\.99"):
        sbc_uniformity(perfect + 1, 99)


def test_errors_are_zero_for_exact_moments_and_exact_by_definition():
    _, x = SIMULATOR.sample_joint(6, seed=0)
    mean, cov = SIMULATOR.posterior_moments(x.double())
    exact = posterior_errors((mean, cov), mean, cov)
    assert exact.mean == exact.mean_std == exact.cov == 0.0 and exact.n == 6
    shared = posterior_errors((mean, cov), mean, cov[0])  # one covariance for all rows
    assert shared.cov == 0.0
    # a shift by delta: Euclidean |delta|, Mahalanobis sqrt(delta' Sigma^-1 delta)
    delta = torch.tensor([0.3, -0.4], dtype=torch.float64)
    moved = posterior_errors((mean + delta, cov), mean, cov)
    assert moved.mean == pytest.approx(0.5)
    assert moved.mean_std == pytest.approx(math.sqrt(delta @ torch.linalg.solve(cov[0], delta)))
    assert moved.cov == 0.0
    doubled = posterior_errors((mean, 2 * cov), mean, cov)
    assert doubled.cov == pytest.approx(1.0) and doubled.mean == 0.0
    assert set(doubled.as_dict()) == {"mean", "mean_std", "cov", "n"}


def test_errors_of_samples_reach_the_noise_floor_and_catch_a_bad_posterior():
    _, x = SIMULATOR.sample_joint(50, seed=0)
    mean, cov = SIMULATOR.posterior_moments(x.double())
    n = 4000
    draws = SIMULATOR.sample_posterior(x, n, torch.Generator().manual_seed(0))
    errors = posterior_errors(draws, mean, cov)
    # E |Sigma^-1/2 (mean_hat - mean)| = sqrt(pi / 2) sqrt(1 / n) for d = 2 (a Rayleigh mean)
    assert errors.mean_std == pytest.approx(math.sqrt(math.pi / 2 / n), rel=0.25)
    assert errors.cov < 0.05
    torch.manual_seed(0)
    wrong = gaussian_posterior(scale=0.6, shift=0.5)(x, n)
    bad = posterior_errors(wrong, mean, cov)
    assert bad.mean_std > 0.5 and bad.cov > 0.5
    sample_mean, sample_cov = sample_moments(draws)
    assert sample_mean.shape == (50, 2) and sample_cov.shape == (50, 2, 2)
    with pytest.raises(ValueError, match="shapes"):
        posterior_errors(draws[:, :, :1], mean, cov)


def test_plot_sbc(tmp_path):
    ranks = sbc_ranks(gaussian_posterior(0.6), SIMULATOR, 200, 99, seed=0)
    path = plots.plot_sbc(ranks, 99, tmp_path / "sbc.png", names=["a", "b"])
    assert imread(path).shape[1] > 500
    expected, low, high = plots.sbc_band(200, 99, bins=20)
    assert expected.sum() == pytest.approx(200) and (low < expected).all()
    assert (high > expected).all()
    with pytest.raises(ValueError, match="names"):
        plots.plot_sbc(ranks, 99, tmp_path / "bad.png", names=["a"])
