"""The one parametrised suite that every transform of the library runs through.

For random (perturbed) parameters, hypothesis-chosen batch sizes and inputs, dimensions
1 (where meaningful), 2, 3, 5 and 8, float64 and float32:
- inverse(forward(x)) == x and forward(inverse(z)) == z;
- the returned log|det J| equals slogdet of the full autograd Jacobian, in both directions;
- the Jacobian has no block between different rows of a batch (rows are independent);
- forward and inverse log-dets are negatives of each other;
- shapes of the outputs and log-dets.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowforge.transforms as T

from cases import CASES, Case, randomize

DIMS = [1, 2, 3, 5, 8]
PARAMS = [
    pytest.param(case, dim, id=f"{case.name}-d{dim}")
    for case in CASES
    for dim in (case.dims or DIMS)
    if dim >= case.min_dim
]

batches = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**16)


def make(case: Case, dim: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 0.5):
    torch.manual_seed(seed)
    return randomize(case.build(dim), seed=seed, scale=scale * case.damping).to(dtype)


def inputs(
    case: Case,
    dim: int,
    batch: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    side: str = "data",
):
    """Inputs of the forward (``side="data"``) or inverse (``"latent"``) direction."""
    generator = torch.Generator().manual_seed(seed + 1)
    event = case.event_shape(dim) if side == "data" else case.latent_event_shape(dim)
    shape = (batch, *event)
    if side == "data" and case.domain == "unit":
        x = 0.01 + 0.98 * torch.rand(shape, generator=generator, dtype=dtype)
    else:
        x = 1.5 * torch.randn(shape, generator=generator, dtype=dtype)
    context = None
    if case.context_dim:
        context = torch.randn((batch, case.context_dim), generator=generator, dtype=dtype)
    return x, context


def jacobian_blocks(fn, x: torch.Tensor) -> torch.Tensor:
    """The autograd Jacobian of a batched map as ``(batch, n, batch, n)``, ``n`` = event size."""
    batch, n = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).reshape(-1), x.reshape(-1))
    return jac.reshape(batch, n, batch, n)


def check_logdet_against_autograd(
    fn, x: torch.Tensor, logdet: torch.Tensor, tolerance: float = 1e-8
) -> None:
    blocks = jacobian_blocks(fn, x)
    batch = x.shape[0]
    for i in range(batch):
        sign, expected = torch.linalg.slogdet(blocks[i, :, i, :])
        assert sign != 0
        torch.testing.assert_close(logdet[i], expected, atol=tolerance, rtol=tolerance)
        for j in range(batch):
            if j != i:
                assert blocks[i, :, j, :].abs().max() == 0, "rows of a batch interact"


@pytest.mark.parametrize(("case", "dim"), PARAMS)
@given(batch=batches, seed=seeds)
def test_round_trip_float64(case: Case, dim: int, batch: int, seed: int):
    transform = make(case, dim, seed)
    x, c = inputs(case, dim, batch, seed)
    z, logdet = transform(x, c)
    x_back, logdet_back = transform.inverse(z, c)
    assert z.shape == (batch, *case.latent_event_shape(dim)) and x_back.shape == x.shape
    assert logdet.shape == (batch,) and logdet_back.shape == (batch,)
    if z.shape == x.shape:  # on 16 points near the origin, inside any spline's tail bound
        near, near_context = inputs(case, dim, 16, seed)
        near = near if case.domain == "unit" else 0.3 * near
        moved, _ = transform(near, near_context)
        assert not torch.allclose(moved, near), "random parameters should not give the identity"
    tolerance = case.round_trip
    torch.testing.assert_close(x_back, x, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(logdet_back, -logdet, atol=tolerance, rtol=tolerance)
    # And from the latent side.
    z, c = inputs(case, dim, batch, seed, side="latent")
    x2, logdet_inv = transform.inverse(z, c)
    z2, logdet_fwd = transform(x2, c)
    torch.testing.assert_close(z2, z, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(logdet_fwd, -logdet_inv, atol=tolerance, rtol=tolerance)
    # The map alone (sampling) is the inverse's map.
    torch.testing.assert_close(transform.map_inverse(z, c), x2, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("case", "dim"), PARAMS)
@given(batch=batches, seed=seeds)
def test_round_trip_float32(case: Case, dim: int, batch: int, seed: int):
    # Milder perturbation than in float64: the float32 error of a composite map grows with its
    # condition number (eps * cond), which strong random weights push past 1e4.
    transform = make(case, dim, seed, torch.float32, scale=0.25)
    x, c = inputs(case, dim, batch, seed, torch.float32)
    z, logdet = transform(x, c)
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32
    x_back, logdet_back = transform.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logdet_back, -logdet, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("case", "dim"), PARAMS)
@given(batch=batches, seed=seeds)
def test_forward_logdet_is_autograd_slogdet(case: Case, dim: int, batch: int, seed: int):
    transform = make(case, dim, seed)
    x, c = inputs(case, dim, batch, seed)
    _, logdet = transform(x, c)
    check_logdet_against_autograd(lambda v: transform(v, c)[0], x, logdet, case.logdet)


@pytest.mark.parametrize(("case", "dim"), PARAMS)
@given(batch=batches, seed=seeds)
def test_inverse_logdet_is_autograd_slogdet(case: Case, dim: int, batch: int, seed: int):
    transform = make(case, dim, seed)
    z, c = inputs(case, dim, batch, seed, side="latent")
    _, logdet = transform.inverse(z, c)
    check_logdet_against_autograd(lambda v: transform.inverse(v, c)[0], z, logdet, case.logdet)


@pytest.mark.parametrize(("case", "dim"), PARAMS)
def test_every_transform_is_a_torch_transform_through_the_adapter(case: Case, dim: int):
    """`TorchTransform`: the generative direction, with torch's sign convention of the
    log-determinant, on two leading batch dimensions (float64, the round-trip tolerance)."""
    transform = make(case, dim, seed=3)
    z, context = inputs(case, dim, 6, seed=3, side="latent")
    adapter = T.TorchTransform(
        transform, context, case.event_shape(dim), case.latent_event_shape(dim)
    )
    expected_x, expected_logdet = transform.inverse(z, context)
    batch_of = (2, 3)  # a sample shape of two dimensions: flattened and restored
    if context is not None:  # per-row contexts fit one batch dimension only
        batch_of = (6,)
    grid = z.reshape(*batch_of, *z.shape[1:])
    x = adapter(grid)
    tolerance = case.round_trip
    assert x.shape == (*batch_of, *case.event_shape(dim))
    torch.testing.assert_close(x.reshape(expected_x.shape), expected_x, atol=tolerance, rtol=0)
    logdet = adapter.log_abs_det_jacobian(grid, x)  # of the pass that made x
    torch.testing.assert_close(logdet.reshape(-1), expected_logdet, atol=tolerance, rtol=0)
    fresh = x.clone()  # not the adapter's last output: computed from x alone
    recomputed = adapter.log_abs_det_jacobian(grid.clone(), fresh)
    torch.testing.assert_close(recomputed, logdet, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(adapter.inv(fresh), grid, atol=tolerance, rtol=tolerance)
    assert adapter.forward_shape(grid.shape) == x.shape
    assert adapter.inverse_shape(x.shape) == grid.shape


@pytest.mark.parametrize("case", [c for c in CASES if c.context_dim], ids=lambda c: c.name)
def test_conditional_transforms_depend_on_context(case: Case):
    transform = make(case, 4, seed=3)
    x, c = inputs(case, 4, 5, seed=3)
    z1, _ = transform(x, c)
    z2, _ = transform(x, c + 1.0)
    assert not torch.allclose(z1, z2)
    with pytest.raises(ValueError, match="context"):
        transform(x)


def test_every_transform_is_registered():
    """Every concrete Transform class that flowforge exports is exercised by some case."""
    exported = {
        cls
        for cls in vars(T).values()
        if inspect.isclass(cls) and issubclass(cls, T.Transform) and not inspect.isabstract(cls)
    }
    covered = set()
    for case in CASES:
        for module in case.build(4).modules():
            covered.add(type(module))
    missing = sorted(cls.__name__ for cls in exported - covered)
    assert not missing, f"transforms missing from tests/cases.py: {missing}"
