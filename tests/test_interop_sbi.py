"""flowforge flows as sbi density estimators (`flowforge.interop.sbi`): sbi's shapes, the
z-scoring, NPE on a model with an analytic posterior (with sbi's posterior sampling,
``log_prob``, ``map`` and SBC), two rounds of SNPE-C, NLE and embedding nets. Skipped where
the ``sbi`` extra is absent."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.inference.simulators import LinearGaussian
from flowforge.runtime import extras
from flowforge.transforms import Standardize

pytestmark = pytest.mark.extra("sbi")  # each test skips, with the reason, without sbi
if extras.installed("sbi"):
    from sbi.diagnostics import check_sbc, run_sbc
    from sbi.inference import NLE, NPE

    from flowforge.interop.sbi import FlowEstimator, likelihood_nn, posterior_nn

SIMULATOR = LinearGaussian(theta_dim=2, x_dim=3, noise=0.5, seed=0)
PRIOR = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
X_OBSERVED = torch.tensor([0.8, -0.4, 1.5])


@pytest.fixture(scope="module", autouse=True)
def _in_a_temporary_directory(tmp_path_factory):
    """sbi writes TensorBoard logs to ./sbi-logs: keep them out of the checkout."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("sbi"))
    yield
    os.chdir(previous)


def simulations(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return SIMULATOR.sample_joint(n, seed=seed)


def train_npe(model: str, n: int = 3000, seed: int = 0, **options):
    torch.manual_seed(seed)
    npe = NPE(PRIOR, density_estimator=posterior_nn(model, **options), show_progress_bars=False)
    theta, x = simulations(n, seed)
    npe.append_simulations(theta, x).train(max_num_epochs=60, training_batch_size=100)
    return npe


@pytest.fixture(scope="module", params=["maf", pytest.param("nsf", marks=pytest.mark.slow)])
def trained(request):
    return request.param, train_npe(request.param, num_transforms=3, hidden_features=32)


def posterior_errors(draws: torch.Tensor, xs: torch.Tensor) -> tuple[float, float]:
    """For draws ``(n, m, 2)`` at ``xs`` ``(m, 3)``: the error of the mean in posterior
    standard deviations (the worse coordinate) and of the covariance relative to the largest
    posterior variance (the worst entry), each averaged over the m observations."""
    mean, covariance = SIMULATOR.posterior(xs)
    scale = covariance.diagonal().sqrt()
    mean_error = ((draws.mean(0) - mean).abs() / scale).amax(1).mean()
    cov_error = (
        torch.stack(
            [(torch.cov(draws[:, i].T) - covariance).abs().max() for i in range(len(xs))]
        ).mean()
        / covariance.diagonal().max()
    )
    return float(mean_error), float(cov_error)


def test_npe_reaches_the_analytic_posterior(trained):
    _, npe = trained
    posterior = npe.build_posterior()
    _, xs = simulations(10, seed=9)
    draws = posterior.sample_batched((4000,), x=xs, show_progress_bars=False)
    assert draws.shape == (4000, 10, 2)
    # measured with 3,000 simulations: maf 0.15 and 0.10, nsf 0.13 and 0.10, sbi's zuko_maf
    # 0.14 and 0.12; a posterior that ignored x would be off by 2-4 standard deviations
    mean_error, cov_error = posterior_errors(draws, xs)
    assert mean_error < 0.25 and cov_error < 0.2, (mean_error, cov_error)
    # log_prob is normalised: beside the exact log-posterior it differs by the KL from the
    # truth on average (small), not by a constant
    theta = draws[:500, 0]
    exact = SIMULATOR.log_posterior(theta, xs[:1].expand(500, 3))
    assert (exact - posterior.log_prob(theta, x=xs[0])).mean().abs() < 0.3


def test_log_prob_batched_and_map(trained):
    _, npe = trained
    posterior = npe.build_posterior()
    _, xs = simulations(4, seed=9)
    theta = posterior.sample_batched((7,), x=xs, show_progress_bars=False)
    log_q = posterior.log_prob_batched(theta, x=xs)
    assert log_q.shape == (7, 4)
    torch.testing.assert_close(log_q[:, 1], posterior.log_prob(theta[:, 1], x=xs[1]))
    mode = posterior.set_default_x(X_OBSERVED).map(num_iter=200, show_progress_bars=False)
    mean, covariance = SIMULATOR.posterior(X_OBSERVED.reshape(1, -1))
    assert ((mode[0] - mean[0]).abs() / covariance.diagonal().sqrt()).max() < 0.3


def test_sbc_ranks_are_uniform(trained):
    _, npe = trained
    theta, x = simulations(200, seed=5)
    ranks, dap = run_sbc(
        theta, x, npe.build_posterior(), num_posterior_samples=200, show_progress_bar=False
    )
    checks = check_sbc(ranks, PRIOR.sample((200,)), dap, num_posterior_samples=200)
    # Kolmogorov-Smirnov p-values of each marginal's ranks: 1e-3 fails a miscalibrated
    # posterior (the prior-width posterior below) and passes this one by a wide margin
    assert checks["ks_pvals"].min() > 1e-3, checks


@pytest.mark.slow  # .ci/run runs it
def test_sbc_fails_a_miscalibrated_posterior():
    npe = train_npe("maf", n=200, num_transforms=1, hidden_features=4)
    theta, x = simulations(200, seed=5)
    estimator = npe._neural_net
    # widen it: a posterior three times too broad piles the ranks in the middle
    standardize = estimator.flow.transform.transforms[0]
    standardize.scale.mul_(3.0)
    ranks, dap = run_sbc(
        theta, x, npe.build_posterior(), num_posterior_samples=200, show_progress_bar=False
    )
    checks = check_sbc(ranks, PRIOR.sample((200,)), dap, num_posterior_samples=200)
    assert checks["ks_pvals"].min() < 1e-3, checks


@pytest.mark.slow  # .ci/run runs it
def test_two_rounds_of_snpe_c():
    torch.manual_seed(1)
    npe = NPE(PRIOR, density_estimator=posterior_nn("maf", num_transforms=3, hidden_features=32))
    proposal = PRIOR
    for round_ in range(2):
        theta = proposal.sample((1500,))
        x = SIMULATOR.simulate(theta, torch.Generator().manual_seed(round_))
        npe.append_simulations(theta, x, proposal=proposal).train(
            max_num_epochs=40, training_batch_size=100
        )
        proposal = npe.build_posterior().set_default_x(X_OBSERVED)
    draws = proposal.sample((4000,), show_progress_bars=False)
    # measured 0.06 and 0.05 (sbi's zuko_maf: 0.04, 0.06); an uncorrected second round
    # (the proposal's density left in) would be about twice too narrow
    mean_error, cov_error = posterior_errors(draws.unsqueeze(1), X_OBSERVED.unsqueeze(0))
    assert mean_error < 0.2 and cov_error < 0.2, (mean_error, cov_error)


@pytest.mark.slow  # .ci/run runs it
def test_nle_learns_the_likelihood():
    torch.manual_seed(2)
    nle = NLE(PRIOR, density_estimator=likelihood_nn("maf", num_transforms=3, hidden_features=32))
    theta, x = simulations(3000, seed=3)
    estimator = nle.append_simulations(theta, x).train(max_num_epochs=60, training_batch_size=100)
    assert isinstance(estimator, FlowEstimator) and estimator.input_shape == (3,)
    theta_test, x_test = simulations(500, seed=4)
    with torch.no_grad():
        learned = estimator.log_prob(x_test, theta_test)[0]
    exact = SIMULATOR.log_likelihood(theta_test, x_test)
    # the mean gap is the KL from the true likelihood (0 for a perfect fit), averaged over
    # theta; its spread says whether the shape is right, not just the normalisation
    assert (exact - learned).mean().abs() < 0.1 and (exact - learned).std() < 0.3


def test_an_embedding_net_trains_with_the_flow():
    torch.manual_seed(3)
    embedding = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 4))
    before = [p.detach().clone() for p in embedding.parameters()]
    npe = NPE(PRIOR, density_estimator=posterior_nn("realnvp", embedding_net=embedding))
    theta, x = simulations(500)
    estimator = npe.append_simulations(theta, x).train(max_num_epochs=3)
    assert estimator.embedding_net[1] is embedding  # behind the z-scoring of x
    assert estimator.flow.context_dim == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, embedding.parameters(), strict=True))


def test_sbi_shapes_and_the_one_pass_sample_and_log_prob():
    theta, x = simulations(300)
    estimator = posterior_nn("nsf", num_transforms=2, hidden_features=16)(theta, x)
    assert estimator.input_shape == (2,) and estimator.condition_shape == (3,)
    assert estimator.log_prob(theta[:5], x[:5]).shape == (1, 5)
    assert estimator.log_prob(theta[:10].reshape(2, 5, 2), x[:5]).shape == (2, 5)
    assert estimator.log_prob(theta[:5], x[:1]).shape == (1, 5)  # one x for every theta
    assert estimator.loss(theta[:5], x[:5]).shape == (5,)
    assert estimator.sample((7,), x[:4]).shape == (7, 4, 2)
    assert estimator.sample((2, 3), x[:4]).shape == (2, 3, 4, 2)
    draws, log_q = estimator.sample_and_log_prob((6,), x[:4])
    assert draws.shape == (6, 4, 2) and log_q.shape == (6, 4)
    # float32, a few layers: the two directions agree to rounding
    torch.testing.assert_close(log_q, estimator.log_prob(draws, x[:4]), rtol=0, atol=1e-4)


def test_a_continuous_flow_is_an_sbi_estimator_trained_through_its_solve():
    """NPE with ``posterior_nn("cnf")``: sbi's shapes, its loss by the exact solve (gradients
    reach the field), and the two directions agree to the solver's tolerance."""
    theta, x = simulations(300)
    estimator = posterior_nn("cnf", hidden_features=16)(theta, x)
    fields = [m for m in estimator.modules() if isinstance(m, ff.nn.TimeMLP)]
    assert len(fields) == 1 and fields[0].context_dim == 3
    loss = estimator.loss(theta[:8], x[:8])
    assert loss.shape == (8,)
    loss.mean().backward()
    assert all(p.grad is not None for p in fields[0].parameters())
    with torch.no_grad():
        draws, log_q = estimator.sample_and_log_prob((6,), x[:4])
        # float32 solves at rtol = atol = 1e-5 on each sample: a few 1e-5 nats apart
        torch.testing.assert_close(log_q, estimator.log_prob(draws, x[:4]), rtol=0, atol=1e-3)
    npe = NPE(PRIOR, density_estimator=posterior_nn("cnf", hidden_features=8))
    npe.append_simulations(theta, x).train(max_num_epochs=2, training_batch_size=100)
    posterior = npe.build_posterior()
    assert posterior.sample((5,), x=X_OBSERVED, show_progress_bars=False).shape == (5, 2)


@pytest.mark.parametrize("structured", [False, True])
def test_z_scoring_of_theta_and_x(structured: bool):
    generator = torch.Generator().manual_seed(0)
    theta = 1000 + 50 * torch.randn(400, 2, generator=generator)
    x = -3 + 0.01 * torch.randn(400, 3, generator=generator)
    kind = "structured" if structured else "independent"
    estimator = posterior_nn("maf", z_score_theta=kind, z_score_x=kind)(theta, x)
    standardize = estimator.flow.transform.transforms[0]
    assert isinstance(standardize, Standardize)
    expected = theta.mean() if structured else theta.mean(0)
    torch.testing.assert_close(standardize.shift, expected.expand(2), rtol=1e-6, atol=0)
    with torch.no_grad():
        context = estimator.embed(x)
    if not structured:
        torch.testing.assert_close(context.mean(0), torch.zeros(3), rtol=0, atol=1e-4)
        torch.testing.assert_close(context.std(0), torch.ones(3), rtol=1e-4, atol=0)
    # the change of variables: log q(theta) = log q_inner(standardised theta) - sum log sigma
    flow = estimator.flow
    inner = ff.Flow(flow.transform.transforms[1], flow.base, flow.embedding)
    with torch.no_grad():
        standardised = (theta[:20] - standardize.shift) / standardize.scale
        expected = inner.log_prob(standardised, context[:20]) - standardize.scale.log().sum()
        torch.testing.assert_close(flow.log_prob(theta[:20], context[:20]), expected)


def test_no_z_scoring_leaves_the_flow_as_built():
    theta, x = simulations(100)
    estimator = posterior_nn("maf", z_score_theta="none", z_score_x="none")(theta, x)
    assert not isinstance(estimator.flow.transform.transforms[0], Standardize)
    assert isinstance(estimator.embedding_net, nn.Identity)


def test_refusals_say_what_was_expected():
    theta, x = simulations(100)
    with pytest.raises(ValueError, match="model must be one of 'nsf'"):
        posterior_nn("zuko_nsf")
    with pytest.raises(ValueError, match="unconstrained space"):
        posterior_nn("maf", z_score_theta="transform_to_unconstrained")
    with pytest.raises(ValueError, match="'independent', 'structured' or 'none'"):
        likelihood_nn("maf", z_score_x="yes")
    with pytest.raises(ValueError, match=r"expected inputs of shape \(n, d\)"):
        posterior_nn("maf")(theta.reshape(100, 2, 1), x)
