"""The rational-quadratic spline on its own: round trip and log-derivative inside and outside
[-B, B], at the knots, with every input in the tails, continuity at the bounds, monotonicity,
and a graph that torch.compile traces without breaks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowforge.transforms as T
from flowforge.flows import models
from flowforge.transforms.spline import rational_quadratic, softmax, spline_knots

bins_ = st.integers(min_value=1, max_value=10)
bounds = st.floats(min_value=0.5, max_value=6.0)
seeds = st.integers(min_value=0, max_value=2**16)


def random_params(shape, bins, seed, scale=1.5):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn((*shape, 3 * bins - 1), generator=generator, dtype=torch.float64)


def derivative(x, params, bound, inverse=False):
    """d out / d in, elementwise, by autograd."""
    x = x.clone().requires_grad_(True)
    out, _ = rational_quadratic(x, params, bound, inverse)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return grad


@given(bins=bins_, bound=bounds, seed=seeds)
def test_round_trip_and_log_derivative_inside_and_outside(bins, bound, seed):
    generator = torch.Generator().manual_seed(seed + 1)
    # A third of the inputs beyond the bound, on both sides.
    x = 1.5 * bound * (2 * torch.rand(300, generator=generator, dtype=torch.float64) - 1)
    params = random_params((300,), bins, seed)
    y, log_d = rational_quadratic(x, params, bound)
    x_back, log_d_back = rational_quadratic(y, params, bound, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_d_back, -log_d, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_d, derivative(x, params, bound).log(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(
        log_d_back, derivative(y, params, bound, inverse=True).log(), atol=1e-9, rtol=1e-9
    )
    outside = x.abs() > bound
    assert outside.any() and (~outside).any()
    assert torch.equal(y[outside], x[outside]) and torch.equal(log_d[outside], 0 * x[outside])
    assert (y[~outside].abs() <= bound).all()


@given(bins=st.integers(min_value=2, max_value=10), bound=bounds, seed=seeds)
def test_knots_map_to_knots(bins, bound, seed):
    params = random_params((1,), bins, seed).expand(bins + 1, -1)
    knots_x, knots_y, slopes = (k[0] for k in spline_knots(params, bound))
    y, log_d = rational_quadratic(knots_x, params, bound)
    torch.testing.assert_close(y, knots_y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(log_d, slopes.log(), atol=1e-10, rtol=1e-10)
    x, log_d_inv = rational_quadratic(knots_y, params, bound, inverse=True)
    torch.testing.assert_close(x, knots_x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(log_d_inv, -slopes.log(), atol=1e-10, rtol=1e-10)
    assert knots_x[0] == -bound and knots_x[-1] == bound and slopes[0] == slopes[-1] == 1


@pytest.mark.parametrize("inverse", [False, True])
def test_every_input_in_the_tails(inverse):
    """The case that crashes implementations which index the inside inputs: none are."""
    bound = 3.0
    x = torch.tensor([[-1e6, -3.5], [4.0, 1e30]], dtype=torch.float64)
    params = random_params((2, 2), 6, seed=0).requires_grad_(True)
    y, log_d = rational_quadratic(x, params, bound, inverse)
    assert torch.equal(y, x) and torch.equal(log_d, torch.zeros_like(x))
    (grad,) = torch.autograd.grad((y.sum() + log_d.sum()), params)
    assert torch.isfinite(grad).all() and torch.equal(grad, torch.zeros_like(grad))


def test_coupling_and_models_with_every_input_in_the_tails():
    coupling = T.SplineCoupling(T.half_mask(4), bins=4, tail_bound=1.0, hidden=(8,))
    x = torch.full((3, 4), 7.0)
    z, logdet = coupling(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3))
    for flow in (models.nsf(3, tail_bound=1.0), models.nsf(3, tail_bound=1.0, autoregressive=True)):
        log_p = flow.log_prob(torch.full((5, 3), -50.0))
        log_p.sum().backward()
        assert torch.isfinite(log_p).all()
        grads = [p.grad for p in flow.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@given(bins=bins_, seed=seeds)
def test_continuous_and_unit_slope_at_the_bounds(bins, seed):
    bound, h = 2.0, 1e-9
    params = random_params((6,), bins, seed)
    x = torch.tensor(
        [-bound - h, -bound, -bound + h, bound - h, bound, bound + h], dtype=torch.float64
    )
    y, log_d = rational_quadratic(x, params, bound)
    torch.testing.assert_close(y, x, atol=1e-7, rtol=0)  # continuous: y(+-B) = +-B
    # The spline's own slope at +-B (inputs exactly at the bounds take the spline branch).
    torch.testing.assert_close(
        log_d[[1, 4]], torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0
    )


@given(bins=bins_, seed=seeds)
def test_monotonic(bins, seed):
    x = torch.linspace(-4, 4, 2001, dtype=torch.float64)
    params = random_params((1,), bins, seed).expand(x.shape[0], -1)
    y, _ = rational_quadratic(x, params, 3.0)
    assert (y.diff() > 0).all()


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    y, log_d = rational_quadratic(x, torch.zeros(101, 3 * 8 - 1, dtype=torch.float64), 3.0)
    torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
    torch.testing.assert_close(log_d, torch.zeros_like(x), atol=1e-14, rtol=0)


def test_rejects_a_bad_tail_bound():
    with pytest.raises(ValueError, match="tail_bound must be a positive finite number"):
        T.SplineCoupling(T.half_mask(4), tail_bound=0.0)
    with pytest.raises(ValueError, match="tail_bound"):
        T.SplineAutoregressive(3, tail_bound=float("inf"))


@pytest.mark.parametrize("inverse", [False, True])
def test_compiles_without_graph_breaks(inverse):
    """Static shapes, no data-dependent Python branch: dynamo traces the spline, a spline
    coupling and an autoregressive spline's forward as single graphs."""
    torch._dynamo.reset()
    x = torch.randn(64, 6)
    params = torch.randn(64, 6, 3 * 8 - 1)
    explained = torch._dynamo.explain(lambda v, p: rational_quadratic(v, p, 3.0, inverse))(
        x, params
    )
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    coupling = T.SplineCoupling(T.half_mask(6), bins=8, tail_bound=3.0, hidden=(16,))
    method = coupling.inverse if inverse else coupling.forward
    assert torch._dynamo.explain(method)(x).graph_break_count == 0
    layer = T.SplineAutoregressive(6, bins=8, tail_bound=3.0, hidden=(16,))
    assert torch._dynamo.explain(layer.forward)(x).graph_break_count == 0


@given(bins=bins_, seed=seeds, scale=st.floats(min_value=0.1, max_value=300.0))
def test_softmax_equals_torch_softmax_with_its_gradient(bins, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    raw = scale * torch.randn(50, 3, bins, generator=generator, dtype=torch.float64)
    weights = torch.randn(50, 3, bins, generator=generator, dtype=torch.float64)
    ours, theirs = raw.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    expected = torch.softmax(theirs, -1)
    got = softmax(ours)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-300)
    assert torch.isfinite(got).all()  # raw values up to ~1000: the shift prevents overflow
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
