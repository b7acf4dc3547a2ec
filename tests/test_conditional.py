"""Conditional flows: the context-dependent base, the embedding network, shapes and errors,
and fitting p(x | c) on paired data."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.datasets import Split
from flowforge.flows.distributions import ConditionalDiagNormal

from cases import randomize


def test_conditional_base_is_the_gaussian_its_network_computes():
    base = randomize(ConditionalDiagNormal(3, context_dim=2, hidden=(8,))).double()
    c = torch.randn(5, 2, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    loc, log_scale = base.net(c).chunk(2, dim=-1)
    expected = torch.distributions.Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(base.log_prob(z, c), expected)
    samples, log_q = base.sample_and_log_prob(5, c)
    torch.testing.assert_close(log_q, base.log_prob(samples, c))
    assert torch.equal(base.location(c), loc)


def test_conditional_base_starts_standard_normal_and_needs_a_context():
    base = ConditionalDiagNormal(2, context_dim=3)
    z = torch.randn(4, 2)
    torch.testing.assert_close(base.log_prob(z, torch.randn(4, 3)), ff.StandardNormal(2)(z))
    with pytest.raises(ValueError, match=r"this base is conditional: expected context of shape"):
        base.log_prob(z)


def conditional_flow(**kwargs) -> ff.Flow:
    flow = ff.models.nsf(2, layers=2, hidden=(16,), context_dim=3, **kwargs).double()
    return randomize(flow, seed=2, scale=0.3)


def test_samples_per_context_row_and_temperature_zero_gives_the_base_mode():
    flow = conditional_flow(embedding_dim=4, base="conditional-normal")
    context = torch.randn(3, 3, dtype=torch.float64)
    assert flow.sample(5, context=context).shape == (5, 3, 2)
    assert flow.sample((2, 4), context=context).shape == (2, 4, 3, 2)
    modes = flow.sample(4, context=context, temperature=0.0)
    # T = 0 maps the context-dependent base mean: one point per context row.
    assert torch.allclose(modes, modes[:1].expand_as(modes))
    assert not torch.allclose(modes[0, 0], modes[0, 1])
    embedded = flow.embedding(context)
    expected, _ = flow.transform.inverse(flow.base.location(embedded), embedded)
    torch.testing.assert_close(modes[0], expected)


def test_the_embedding_trains_with_the_flow():
    flow = conditional_flow(embedding_dim=4)
    x = torch.randn(16, 2, dtype=torch.float64)
    c = torch.randn(16, 3, dtype=torch.float64)
    flow.log_prob(x, c).mean().backward()
    grads = [p.grad for p in flow.embedding.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_context_shape_errors_are_one_line():
    flow = conditional_flow()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"batch shape \(4,\) and context batch shape \(3,\)"):
        flow.log_prob(x, torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"this flow is conditional: expected a context of shape"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 3\)"):
        flow.sample(2, context=torch.randn(2, dtype=torch.float64))


def test_fit_learns_a_conditional_density():
    """x | c ~ N(2c, 0.1^2) in 2-D: the fitted conditional flow reaches the true conditional
    entropy, which no unconditional model of x can (x's marginal is much wider)."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        c = torch.randn(n, 2, generator=generator)
        return Split(2 * c + 0.1 * torch.randn(n, 2, generator=generator), context=c)

    train, val, test = split(4000), split(500), split(1000)
    flow = ff.models.maf(2, layers=2, hidden=(32, 32), context_dim=2, base="conditional-normal")
    ff.fit(flow, train, val, epochs=30, batch_size=256, lr=3e-3, progress=False)
    nll = ff.evaluate(flow, test).nll
    entropy = 2 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.1))  # -2.76 nats
    assert abs(nll - entropy) < 0.15


@pytest.mark.parametrize("model", ["glow", "realnvp_image"])
def test_conditional_image_flows(model):
    """A class-conditional image flow: samples per label, consistent densities, and a
    density that depends on the label."""
    kwargs = dict(levels=2, steps=1, channels=8) if model == "glow" else dict(scales=2, blocks=0)
    flow = ff.models.MODELS[model]((1, 4, 4), context_dim=3, **kwargs).double()
    flow = randomize(flow, seed=4, scale=0.1)
    labels = torch.eye(3, dtype=torch.float64)  # one-hot classes
    x, log_q = flow.sample_and_log_prob(4, context=labels)
    assert x.shape == (4, 3, 1, 4, 4) and log_q.shape == (4, 3)
    repeated = labels.expand(4, 3, 3)
    torch.testing.assert_close(log_q, flow.log_prob(x, context=repeated), atol=1e-8, rtol=1e-8)
    assert not torch.allclose(flow.log_prob(x, repeated), flow.log_prob(x, repeated.roll(1, 1)))


def test_a_conditional_flow_saves_and_reloads(tmp_path):
    flow = conditional_flow(embedding_dim=4, base="conditional-normal")
    ff.save(flow, tmp_path / "run")
    loaded = ff.load(tmp_path / "run").double()
    x = torch.randn(6, 2, dtype=torch.float64)
    c = torch.randn(6, 3, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))
