"""Base distributions against torch.distributions, stability, moments, any event shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Independent,
    Normal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
)

import flowforge as ff


def torch_logistic(dim: int) -> torch.distributions.Distribution:
    u = Uniform(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64))
    return Independent(TransformedDistribution(u, [SigmoidTransform().inv]), 1)


def test_standard_normal_matches_torch():
    z = 3 * torch.randn(50, 4, dtype=torch.float64)
    base = ff.StandardNormal(4).double()
    reference = Independent(Normal(torch.zeros(4).double(), torch.ones(4).double()), 1)
    torch.testing.assert_close(base.log_prob(z), reference.log_prob(z))


def test_standard_logistic_matches_torch():
    z = 3 * torch.randn(50, 4, dtype=torch.float64)
    base = ff.StandardLogistic(4).double()
    torch.testing.assert_close(base.log_prob(z), torch_logistic(4).log_prob(z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_logistic_is_stable_far_out(dtype):
    z = torch.tensor([[-1000.0], [-100.0], [0.0], [100.0], [1000.0]], dtype=dtype)
    log_p = ff.StandardLogistic(1).to(dtype).log_prob(z)
    expected = -z.abs().squeeze(-1) - 2 * torch.log1p(torch.exp(-z.abs().squeeze(-1)))
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p, expected)


def test_diag_normal_matches_torch():
    base = ff.DiagNormal(3).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([1.0, -2.0, 0.5]))
        base.log_scale.copy_(torch.tensor([0.3, -0.7, 1.2]))
    reference = Independent(Normal(base.loc.detach(), base.log_scale.detach().exp()), 1)
    z = torch.randn(40, 3, dtype=torch.float64)
    torch.testing.assert_close(base.log_prob(z), reference.log_prob(z))
    x, log_q = base.sample_and_log_prob(40)
    torch.testing.assert_close(log_q, reference.log_prob(x))
    assert x.requires_grad  # reparameterised


@pytest.mark.parametrize(
    ("base", "std"),
    [(ff.StandardNormal, 1.0), (ff.StandardLogistic, math.pi / math.sqrt(3)), (ff.DiagNormal, 1.0)],
)
def test_sample_moments(base, std):
    samples = base(2).sample_and_log_prob(100_000)[0].detach()
    se = std / math.sqrt(100_000)
    assert (samples.mean(0).abs() < 5 * se).all()
    assert ((samples.std(0) - std).abs() < 0.02 * std).all()


@pytest.mark.parametrize("base", [ff.StandardNormal, ff.StandardLogistic, ff.DiagNormal])
def test_any_event_shape(base):
    dist = base((3, 4, 4)).double()
    assert dist.event_shape == (3, 4, 4)
    z, log_q = dist.sample_and_log_prob(5)
    assert z.shape == (5, 3, 4, 4) and log_q.shape == (5,)
    flat = base(48).double()
    flat.load_state_dict({k: v.flatten() for k, v in dist.state_dict().items()})
    torch.testing.assert_close(dist.log_prob(z), flat.log_prob(z.flatten(1)))


def test_make_base_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown base 'gauss'"):
        ff.distributions.make_base("gauss", 2)


@pytest.mark.parametrize("base", [ff.StandardNormal, ff.StandardLogistic, ff.DiagNormal])
def test_bases_follow_dtype_of_the_module(base):
    dist = base(2).double()
    assert dist.sample_and_log_prob(3)[0].dtype == torch.float64
    assert dist.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_logistic_sampling_never_gives_infinity():
    torch.manual_seed(0)
    assert torch.isfinite(ff.StandardLogistic(1000).rsample(200)).all()


def test_affine_logistic_density_matches_change_of_variables():
    """Sanity check of the convention: x = 2 z + 1 with z logistic."""
    flow = ff.Flow(ff.transforms.DiagonalScaling(1), ff.StandardLogistic(1)).double()
    with torch.no_grad():
        flow.transform.log_scale.fill_(-math.log(2.0))  # z = x / 2
    reference = TransformedDistribution(torch_logistic(1), [AffineTransform(0.0, 2.0)])
    x = 5 * torch.randn(20, 1, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), reference.log_prob(x))
