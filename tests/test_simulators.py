"""Simulators with known posteriors: each analytic quantity against a brute-force check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from flowforge import plots
from flowforge.inference.simulators import SIMULATORS, LinearGaussian, TwoMoons


def grid_2d(low: tuple[float, float], high: tuple[float, float], n: int):
    """Cell centres ``(n*n, 2)`` (float64) of an ``n``-square grid over the box, cell area."""
    a = torch.linspace(low[0], high[0], n + 1, dtype=torch.float64)
    b = torch.linspace(low[1], high[1], n + 1, dtype=torch.float64)
    ca, cb = (a[1:] + a[:-1]) / 2, (b[1:] + b[:-1]) / 2
    g2, g1 = torch.meshgrid(cb, ca, indexing="ij")
    area = (a[1] - a[0]) * (b[1] - b[0])
    return torch.stack((g1.reshape(-1), g2.reshape(-1)), 1), area.item()


def weighted_moments(points: torch.Tensor, log_w: torch.Tensor):
    w = torch.softmax(log_w, 0)
    mean = w @ points
    centred = points - mean
    return mean, (centred * w[:, None]).T @ centred


# --- the shared interface ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_shapes_dtypes_and_reproducible_joint_samples(name):
    simulator = SIMULATORS[name]()
    theta, x = simulator.sample_joint(7, seed=3)
    assert theta.shape == (7, simulator.theta_dim) and x.shape == (7, simulator.x_dim)
    assert theta.dtype == x.dtype == torch.float32
    again = simulator.sample_joint(7, seed=3)
    assert torch.equal(theta, again[0]) and torch.equal(x, again[1])
    assert not torch.equal(x, simulator.sample_joint(7, seed=4)[1])
    assert simulator.log_prior(theta).shape == (7,)
    assert simulator.log_likelihood(theta, x).shape == (7,)
    assert simulator.log_likelihood(theta[:, None], x[None]).shape == (7, 7)  # broadcasts
    assert simulator.log_posterior(theta, x).shape == (7,)
    mean, cov = simulator.posterior_moments(x[:3])
    assert mean.shape == (3, simulator.theta_dim)
    assert cov.shape == (3, simulator.theta_dim, simulator.theta_dim)
    draws = simulator.sample_posterior(x[:3], 5)
    assert draws.shape == (5, 3, simulator.theta_dim) and draws.dtype == torch.float32
    assert torch.isfinite(simulator.log_posterior(draws, x[:3])).all()
    with pytest.raises(ValueError, match="shape"):
        simulator.posterior_moments(torch.zeros(3, simulator.x_dim + 1))


# --- linear-Gaussian -------------------------------------------------------------------


def test_linear_gaussian_posterior_matches_a_grid():
    """Closed-form posterior mean and covariance == moments of prior x likelihood on a grid."""
    simulator = LinearGaussian(noise=0.5, seed=1)
    _, x = simulator.sample_joint(3, seed=0)
    mean, cov = simulator.posterior(x.double())
    assert cov.shape == (2, 2)
    points, area = grid_2d((-6.0, -6.0), (6.0, 6.0), 600)
    for i in range(3):
        log_w = simulator.log_prior(points) + simulator.log_likelihood(points, x[i].double())
        grid_mean, grid_cov = weighted_moments(points, log_w)
        torch.testing.assert_close(grid_mean, mean[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(grid_cov, cov, atol=1e-3, rtol=0)
        # the evidence normalises prior x likelihood, so the posterior density integrates to 1
        log_z = torch.logsumexp(log_w, 0) + math.log(area)
        assert simulator.log_evidence(x[i : i + 1].double()).item() == pytest.approx(
            log_z.item(), abs=1e-6
        )


def test_linear_gaussian_posterior_matches_the_simulator():
    """E[theta | x] is linear in x and the residuals have covariance Sigma: a regression on
    joint samples from the simulator recovers the analytic gain and covariance."""
    simulator = LinearGaussian(theta_dim=3, x_dim=2, noise=0.7, seed=2)
    theta, x = simulator.sample_joint(200_000, seed=1)
    theta, x = theta.double(), x.double()
    design = torch.cat((x, torch.ones(len(x), 1, dtype=torch.float64)), 1)
    coefficients = torch.linalg.lstsq(design, theta).solution
    mean, cov = simulator.posterior(x[:5])
    torch.testing.assert_close(design[:5] @ coefficients, mean, atol=0.02, rtol=0)
    residual = theta - design @ coefficients
    torch.testing.assert_close(residual.T @ residual / len(x), cov, atol=0.01, rtol=0)


def test_linear_gaussian_prior_and_exact_samples():
    prior_mean = torch.tensor([1.0, -1.0])
    prior_cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    simulator = LinearGaussian(noise=0.3, prior_mean=prior_mean, prior_cov=prior_cov)
    theta = simulator.sample_prior(100_000, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(theta.mean(0), prior_mean.double(), atol=0.02, rtol=0)
    torch.testing.assert_close(theta.T.cov(), prior_cov.double(), atol=0.03, rtol=0)
    x = simulator.simulate(theta[:2])
    draws = simulator.sample_posterior(x, 50_000, torch.Generator().manual_seed(1)).double()
    mean, cov = simulator.posterior(x)
    torch.testing.assert_close(draws.mean(0), mean.double(), atol=0.01, rtol=0)
    torch.testing.assert_close(draws[:, 0].T.cov(), cov.double(), atol=0.005, rtol=0)


def test_linear_gaussian_rejects_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        LinearGaussian(noise=0.0)
    with pytest.raises(ValueError, match="theta_dim"):
        LinearGaussian(theta_dim=0)


# --- two moons ---------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [(0.0, 0.0), (0.5, -0.3), (-0.9, 0.8)])
def test_two_moons_likelihood_integrates_to_one(theta):
    """Over x, on a fine grid around the ring: 1, not 2 (the ring is cut to a half-plane)."""
    simulator = TwoMoons()
    theta = torch.tensor(theta, dtype=torch.float64)
    centre = simulator.offset(theta) + torch.tensor([0.25, 0.0], dtype=torch.float64)
    low, high = (centre - 0.2).tolist(), (centre + 0.2).tolist()
    points, area = grid_2d(low, high, 800)
    log_p = simulator.log_likelihood(theta, points)
    assert (log_p.exp().sum() * area).item() == pytest.approx(1.0, abs=2e-3)
    # the left half-plane u_1 < 0 holds only the tail r < 0: no mass, and e^-200 on the ring
    u = points - centre
    left = u[:, 0] < 0
    assert (log_p[left].exp().sum() * area).item() < 1e-15
    ring = (u.norm(dim=1) - 0.1).abs() < 0.02
    assert log_p[left & ring].max() < -150 < -10 < log_p[~left & ring].min()


def test_two_moons_samples_follow_the_likelihood():
    """Histogram of simulated x against the likelihood integrated over the same bins."""
    simulator = TwoMoons()
    theta = torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    x = simulator.simulate(theta.expand(100_000, 2), torch.Generator().manual_seed(0)).double()
    centre = simulator.offset(theta[0]) + torch.tensor([0.25, 0.0], dtype=torch.float64)
    low, high = (centre - 0.15).tolist(), (centre + 0.15).tolist()
    edges = [np.linspace(low[i], high[i], 16) for i in range(2)]
    counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=edges)
    points, area = grid_2d(low, high, 600)  # 40 x 40 fine cells per histogram bin
    density = simulator.log_likelihood(theta[0], points).exp() * area
    expected = density.reshape(15, 40, 15, 40).sum((1, 3)).T.numpy()  # (bin of x1, bin of x2)
    assert counts.sum() == 100_000  # nothing falls outside the box
    assert np.abs(counts / 100_000 - expected).max() < 0.004
    assert np.abs(expected).sum() == pytest.approx(1.0, abs=2e-3)


def test_two_moons_grid_posterior_is_normalised_and_symmetric():
    simulator = TwoMoons(resolution=400)
    points, weights = simulator.posterior_grid(torch.zeros(2))
    assert points.shape == (400 * 400, 2) and weights.shape == (400 * 400,)
    assert (weights >= 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    w = weights.reshape(400, 400)  # rows: theta_2, columns: theta_1
    # any x: symmetric under (t1, t2) -> (-t2, -t1); x = 0 also under t1 <-> t2
    torch.testing.assert_close(w, w.flip(0, 1).T)
    torch.testing.assert_close(w, w.T)
    # two crescents, one on each side of t1 + t2 = 0, each with half of the mass
    upper = points.sum(1) > 0
    assert weights[upper].sum().item() == pytest.approx(0.5, abs=1e-9)
    # the crescents: |t1 + t2| / sqrt(2) = 0.25 + r cos a lies in [0.25, 0.35 + 3 sd]
    s = points.sum(1).abs() / math.sqrt(2)
    assert weights[(s < 0.22) | (s > 0.4)].sum() < 1e-3
    mean, cov = simulator.posterior_moments(torch.zeros(1, 2))
    torch.testing.assert_close(mean, torch.zeros(1, 2), atol=1e-12, rtol=0)
    assert cov[0, 0, 1] > 0.8 * cov[0, 0, 0]  # the crescents lie along t1 = t2

    other = torch.tensor([[0.1, -0.2]])
    _, weights = simulator.posterior_grid(other)
    w = weights.reshape(400, 400)
    torch.testing.assert_close(w, w.flip(0, 1).T)


def test_two_moons_grid_and_rejection_posteriors_agree():
    """Two independent computations of the posterior: grid moments and exact draws."""
    simulator = TwoMoons()
    _, x = simulator.sample_joint(4, seed=5)
    mean, cov = simulator.posterior_moments(x.double())
    draws = simulator.sample_posterior(x.double(), 40_000, torch.Generator().manual_seed(0))
    assert (draws.abs() <= 1).all()
    for i in range(4):
        torch.testing.assert_close(draws[:, i].mean(0), mean[i], atol=0.01, rtol=0)
        torch.testing.assert_close(draws[:, i].T.cov(), cov[i], atol=0.005, rtol=0)
    jittered = simulator.sample_posterior_grid(x.double(), 40_000, torch.Generator().manual_seed(1))
    assert jittered.shape == (40_000, 4, 2)
    torch.testing.assert_close(jittered.mean(0), mean, atol=0.01, rtol=0)
    # the evidence normalises the posterior: log p(theta | x) integrates to 1 on the grid
    points, area = grid_2d((-1.0, -1.0), (1.0, 1.0), 1000)
    log_post = simulator.log_posterior(points[:, None], x[:1].double())
    assert (log_post.exp().sum() * area).item() == pytest.approx(1.0, abs=1e-6)


def test_two_moons_rejection_sampler_gives_up_on_impossible_data():
    with pytest.raises(RuntimeError, match="sample_posterior_grid"):
        TwoMoons().sample_posterior(torch.tensor([[5.0, 5.0]]), 10, max_rounds=3)


# --- figures -----------------------------------------------------------------------------


def test_plot_posteriors_with_grid_and_gaussian(tmp_path):
    moons = TwoMoons(resolution=300)
    theta, x = moons.sample_joint(2, seed=0)
    draws = moons.sample_posterior(x, 300)
    path = plots.plot_posteriors(
        draws, tmp_path / "moons.png", grid=moons.posterior_grid(x), truths=theta
    )
    assert imread(path).shape[0] > 100
    gaussian = LinearGaussian()
    theta, x = gaussian.sample_joint(3, seed=0)
    path = plots.plot_posteriors(
        gaussian.sample_posterior(x, 300),
        tmp_path / "gaussian.png",
        gaussian=gaussian.posterior(x),
        titles=["a", "b", "c"],
    )
    assert imread(path).shape[1] > 300
    with pytest.raises(ValueError, match="not both"):
        plots.plot_posteriors(
            draws, tmp_path / "x.png", grid=moons.posterior_grid(x), gaussian=(x, torch.eye(2))
        )
