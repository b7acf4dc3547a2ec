"""flowforge flows inside Pyro (`Flow.as_pyro`): SVI guides reach a closed-form posterior,
plates, vectorised particles, Predictive, JitTrace_ELBO and the one-pass log q of a guide's
own draw. Skipped where the ``pyro`` extra is absent."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import flowforge as ff
from flowforge.runtime import extras

pytestmark = pytest.mark.extra("pyro")  # each test skips, with the reason, without Pyro
if extras.installed("pyro"):
    import pyro
    import pyro.distributions as dist
    import pyro.infer as infer

    from flowforge.interop.pyro import PyroFlow

# z ~ N(0, I_2), x_i | z ~ N(A z, s^2 I_3) for i = 1..N: the posterior is Gaussian with
# precision I + N A^T A / s^2 and mean (its inverse) A^T sum_i x_i / s^2.
A = torch.tensor([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])
NOISE = 1.0


def conjugate_data(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2, generator=generator)
    return z @ A.T + NOISE * torch.randn(n, 3, generator=generator)


def posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    precision = torch.eye(2) + len(x) * A.T @ A / NOISE**2
    covariance = torch.linalg.inv(precision)
    return covariance @ A.T @ x.sum(0) / NOISE**2, covariance


def model(x: torch.Tensor) -> None:
    """The N observations through their sufficient statistic, mean(x) ~ N(A z, s^2 / N I):
    no plate, so that vectorised particles and ``Predictive(parallel=True)`` both hold z as
    ``(particles, 2)`` (Pyro's Predictive reshapes a global latent with an event dimension so
    that a plate-based likelihood would need a different shape)."""
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    scale = NOISE / x.shape[0] ** 0.5
    pyro.sample("x_mean", dist.Normal(z @ A.T, scale).to_event(1), obs=x.mean(0))


def local_model(x: torch.Tensor) -> None:
    """z_i ~ N(0, I), x_i | z_i ~ N(A z_i, s^2 I): one latent per datum, in a plate."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ A.T, NOISE).to_event(1), obs=x)


def train(guide, model_args, steps: int, particles: int, lr: float = 1e-2, loss=None):
    loss = loss or infer.Trace_ELBO(
        num_particles=particles, vectorize_particles=True, max_plate_nesting=1
    )
    # the learning rate decays tenfold over the run, so the last iterate is not SGD noise
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    svi = infer.SVI(model, guide, optim, loss)
    for _ in range(steps):
        svi.step(*model_args)
    return svi


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def test_svi_with_an_iaf_guide_reaches_the_conjugate_posterior():
    x = conjugate_data(10)
    flow = ff.models.iaf(dim=2, layers=3, hidden=(32,))

    def guide(x):
        pyro.module("flow", flow)
        return pyro.sample("z", flow.as_pyro())

    train(guide, (x,), steps=1500, particles=16)
    with torch.no_grad():
        draws = flow.sample(20_000)
    mean, covariance = posterior(x)
    # 20,000 draws estimate the mean to about 3 * 0.1 / sqrt(20_000) = 0.002 and the
    # covariance to a few percent: the limits are the issue's, the rest is the fit.
    assert (draws.mean(0) - mean).abs().max() < 0.05
    relative = (torch.cov(draws.T) - covariance).abs() / covariance.diagonal().max()
    assert relative.max() < 0.10, (torch.cov(draws.T), covariance)


def test_pyro_module_registers_every_parameter():
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    pyro.module("flow", flow)
    registered = {id(value) for value in pyro.get_param_store().values()}
    assert registered == {id(parameter) for parameter in flow.parameters()}


def test_calling_samples_and_expand_follows_plates():
    flow = ff.models.maf(dim=3, layers=2, hidden=(8,))
    assert flow.as_pyro()().shape == (3,)
    expanded = flow.as_pyro().expand((4, 5))
    assert expanded.batch_shape == (4, 5) and expanded.event_shape == (3,)
    assert expanded.sample((2,)).shape == (2, 4, 5, 3)
    with pyro.plate("rows", 6):
        assert pyro.sample("z", flow.as_pyro()).shape == (6, 3)
    # Pyro's plates pass their sizes as 0-d tensors under vectorised particles.
    assert flow.as_pyro().expand((torch.tensor(7), torch.tensor(1))).batch_shape == (7, 1)


def test_log_prob_of_its_own_draw_is_the_one_pass_log_density():
    flow = ff.models.iaf(dim=4, layers=2, hidden=(16,))
    q = flow.as_pyro().expand((8,))
    x = q.rsample()
    cached = q.log_prob(x)
    assert cached is q._drawn[1]
    # the same value scored afresh (the slow direction of the IAF) agrees to float32
    # rounding of a few layers, and a different tensor is scored afresh
    torch.testing.assert_close(cached, flow.log_prob(x), rtol=0, atol=1e-4)
    other = x.clone()
    assert q.log_prob(other) is not q._drawn[1]
    torch.testing.assert_close(q.log_prob(other), cached, rtol=0, atol=1e-4)


def test_vectorised_particles_are_distinct():
    flow = ff.models.iaf(dim=2, layers=2, hidden=(8,))
    values = []

    def guide(x):
        pyro.module("flow", flow)
        values.append(pyro.sample("z", flow.as_pyro()))

    elbo = infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    elbo.loss(model, guide, conjugate_data(5))
    z = values[-1]
    assert z.shape == (8, 1, 2)
    assert torch.unique(z.reshape(8, 2), dim=0).shape[0] == 8
    # ... and Pyro scored them with the cached log q: the IAF's slow direction never ran
    scored = []
    flow.log_prob = lambda *args, **kwargs: scored.append(args)
    elbo.loss(model, guide, conjugate_data(5))
    assert scored == []


def test_amortized_guide_in_a_plate_with_per_datum_contexts():
    # q(z_i | x_i) from one conditional flow, the posterior N(S A^T x_i, S), S = (I + A^T A)^-1
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(32,), context_dim=3)

    def guide(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", flow.as_pyro(x))

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 2, generator=generator) @ A.T + torch.randn(256, 3, generator=generator)
    elbo = infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = infer.SVI(local_model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(600):
        svi.step(x)
    covariance = torch.linalg.inv(torch.eye(2) + A.T @ A)
    x_new = torch.tensor([[1.0, -0.5, 2.0]])
    with torch.no_grad():
        draws = flow.sample(20_000, context=x_new[0])
    torch.testing.assert_close(draws.mean(0), (covariance @ A.T @ x_new[0]), rtol=0, atol=0.1)
    torch.testing.assert_close(torch.cov(draws.T), covariance, rtol=0, atol=0.1)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_from_a_global_guide(parallel: bool):
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))

    def guide(x):
        pyro.module("flow", flow)
        return pyro.sample("z", flow.as_pyro())

    draws = infer.Predictive(model, guide=guide, num_samples=30, parallel=parallel)(
        conjugate_data(5)
    )
    assert draws["z"].shape == (30, 2) and draws["x_mean"].shape == (30, 3)
    assert torch.unique(draws["z"], dim=0).shape[0] == 30


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_from_an_amortized_guide(parallel: bool):
    flow = ff.models.maf(dim=2, layers=2, hidden=(8,), context_dim=3)

    def guide(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", flow.as_pyro(x))

    x = conjugate_data(5)
    draws = infer.Predictive(local_model, guide=guide, num_samples=30, parallel=parallel)(x)
    assert draws["z"].shape == (30, 5, 2) and draws["x"].shape == (30, 5, 3)
    assert torch.unique(draws["z"].reshape(150, 2), dim=0).shape[0] == 150


def test_jit_trace_elbo_runs_without_tracer_warnings_from_flowforge():
    flow = ff.models.iaf(dim=2, layers=2, hidden=(8,))

    def guide(x):
        pyro.module("flow", flow)
        return pyro.sample("z", flow.as_pyro())

    x = conjugate_data(5)
    loss = infer.JitTrace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        svi = train(guide, (x,), steps=3, particles=4, loss=loss)
    source = str(Path(ff.__file__).parent)
    ours = [w for w in caught if w.filename.startswith(source)]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    # the traced loss is the ELBO: it agrees with the untraced one on average
    plain = infer.Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    jitted = [svi.evaluate_loss(x) for _ in range(500)]
    assert abs(sum(jitted) / 500 - plain.loss(model, guide, x)) < 0.5


def test_as_pyro_is_a_pyro_distribution_with_the_contexts_batch_shape():
    flow = ff.models.maf(dim=2, layers=2, hidden=(8,), context_dim=4)
    q = flow.as_pyro(torch.randn(3, 4))
    assert isinstance(q, PyroFlow) and isinstance(q, dist.torch_distribution.TorchDistributionMixin)
    assert q.batch_shape == (3,) and q.sample((5,)).shape == (5, 3, 2)
    assert q.to_event(1).event_shape == (3, 2)
    with pytest.raises(ValueError, match="context"):
        flow.as_pyro(torch.randn(3, 5))
