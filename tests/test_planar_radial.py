"""Planar and radial flows: the paper's constraints, and exact inverses in hard places."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowforge as ff
from flowforge.transforms import Planar, Radial
from flowforge.transforms.planar import solve_monotone_tanh

floats = st.floats(-20, 20, allow_nan=False)


@given(st.lists(floats, min_size=6, max_size=6))
def test_planar_constraint_holds_for_any_parameters(values):
    layer = Planar(3).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor(values[:3]))
        layer.w.copy_(torch.tensor(values[3:]))
    if layer.w.norm() < 1e-3:
        return
    u_hat, one_plus_c = layer.u_hat()
    assert one_plus_c > 0
    assert layer.w @ u_hat > -1 - 1e-12 * (1 + layer.w.norm() * layer.u.norm())  # up to rounding
    z = 5 * torch.randn(100, 3, dtype=torch.float64)
    assert torch.isfinite(layer(z)[1]).all()  # the Jacobian is never singular


@given(floats, floats)
def test_radial_constraint_holds_for_any_parameters(alpha_raw, beta_raw):
    layer = Radial(2).double()
    with torch.no_grad():
        layer.alpha_raw.fill_(alpha_raw)
        layer.beta_raw.fill_(beta_raw)
    alpha, beta = layer.alpha_beta()
    assert alpha > 0 and beta >= -alpha


def planar_with(c: float, dim: int = 3) -> Planar:
    """A planar layer with w^T u_hat = c exactly."""
    layer = Planar(dim).double()
    with torch.no_grad():
        layer.w.copy_(torch.linspace(0.5, 1.5, dim))
        layer.b.fill_(0.3)
        w = layer.w
        # m(a) = c  <=>  a = softplus^-1(c + 1) = log(expm1(c + 1)), ~ c + 1 for large c
        target = math.log(math.expm1(c + 1)) if c < 30 else c + 1
        layer.u.copy_(target * w / (w @ w))
    torch.testing.assert_close(layer.w @ layer.u_hat()[0], torch.tensor(c, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("c", [-0.999999, -0.9, 0.0, 1.0, 50.0, 1e4])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_planar_inverse_in_hard_places(c, scale):
    """Near-singular layers (c -> -1), steep ones, and points near and far from the plane."""
    layer = planar_with(c)
    z = scale * torch.randn(200, 3, dtype=torch.float64)
    x, logdet = layer(z)
    z_back, logdet_back = layer.inverse(x)
    torch.testing.assert_close(z_back, z, atol=1e-9 * max(1.0, scale), rtol=1e-8)
    torch.testing.assert_close(logdet_back, -logdet, atol=1e-8, rtol=1e-8)


@given(
    y=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=20),
    c=st.floats(-0.9999, 1e3),
)
def test_monotone_solver_finds_the_root(y, c):
    y = torch.tensor(y, dtype=torch.float64)
    c = torch.tensor(c, dtype=torch.float64)
    a = solve_monotone_tanh(y, c)
    residual = a + c * torch.tanh(a) - y
    assert (residual.abs() <= 1e-9 * (1 + y.abs() + c.abs())).all()


def test_radial_inverse_at_the_centre_and_far_away():
    layer = Radial(3).double()
    with torch.no_grad():
        layer.alpha_raw.fill_(0.5)
        layer.beta_raw.fill_(-4.0)  # beta close to -alpha: strongly contracting near z0
    z = torch.cat([layer.z0.detach().unsqueeze(0), 1e4 * torch.randn(5, 3).double()])
    x, logdet = layer(z)
    z_back, logdet_back = layer.inverse(x)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(logdet_back, -logdet)
    # Gradients are finite at the centre too.
    x_centre = layer.z0.detach().unsqueeze(0).clone().requires_grad_()
    layer.inverse(x_centre)[1].sum().backward()
    assert torch.isfinite(layer.alpha_raw.grad) and torch.isfinite(layer.beta_raw.grad)


@pytest.mark.parametrize("builder", [ff.models.planar, ff.models.radial])
def test_log_prob_at_arbitrary_points_matches_sampling(builder):
    torch.manual_seed(0)
    flow = builder(dim=2, layers=32, base="diag-normal").double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x, log_q = flow.sample_and_log_prob(2000)
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-8, rtol=1e-8)
    # And at points that were never sampled: finite, and the inverse maps them back.
    grid = 4 * torch.rand(500, 2, dtype=torch.float64) - 2
    z, _ = flow.transform(grid)
    torch.testing.assert_close(flow.transform.inverse(z)[0], grid, atol=1e-8, rtol=1e-8)
    assert torch.isfinite(flow.log_prob(grid)).all()


def test_planar_log_prob_trains_by_maximum_likelihood():
    """Gradients of log_prob flow through the inverse's implicit derivative."""
    torch.manual_seed(0)
    flow = ff.models.planar(dim=2, layers=4)
    data = torch.randn(256, 2) * torch.tensor([2.0, 0.5]) + 1
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.05)
    before = -flow.log_prob(data).mean().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < before - 0.3
