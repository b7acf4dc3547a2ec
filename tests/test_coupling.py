"""Coupling layers: the split and mask formulations agree, one conditioner call per layer,
views instead of copies, and a bounded scale."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowforge.transforms as T

from cases import _random_mask, randomize
from tolerances import inf_norm_of_jacobian, mlp_operations, rounding_bound


def masked_copy_of(split: T.AffineCoupling, fill_seed: int = 0) -> T.MaskedAffineCoupling:
    """A MaskedAffineCoupling computing the same function with the same weights.

    The mask formulation's conditioner reads all D inputs and writes 2D outputs. Its first
    layer takes the split conditioner's weights in the columns of the kept features; its last
    layer the split one's rows at the transformed features. Every other entry is random: the
    mask multiplies the inputs it meets by zero and discards the outputs it writes.
    """
    mask = split.partition.mask
    kept, changed = mask.nonzero().flatten(), (~mask).nonzero().flatten()
    dim, ctx = mask.numel(), split.context_dim
    hidden = [m.out_features for m in split.conditioner[:-1] if isinstance(m, torch.nn.Linear)]
    masked = T.MaskedAffineCoupling(
        mask, hidden=hidden, context_dim=ctx, scale_bound=split.scale_bound
    ).to(next(split.parameters()).dtype)
    randomize(masked, seed=fill_seed, scale=1.0)
    src = [m for m in split.conditioner if isinstance(m, torch.nn.Linear)]
    dst = [m for m in masked.conditioner if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        dst[0].weight[:, kept] = src[0].weight[:, : len(kept)]
        dst[0].weight[:, dim:] = src[0].weight[:, len(kept) :]  # context columns
        dst[0].bias.copy_(src[0].bias)
        for a, b in zip(src[1:-1], dst[1:-1], strict=True):
            b.load_state_dict(a.state_dict())
        n = len(changed)
        for half in range(2):  # rows of (log-scale, shift)
            dst[-1].weight[half * dim + changed] = src[-1].weight[half * n : (half + 1) * n]
            dst[-1].bias[half * dim + changed] = src[-1].bias[half * n : (half + 1) * n]
    return masked


@pytest.mark.parametrize("kind", ["half", "odd-even", "random"])
@pytest.mark.parametrize("context_dim", [0, 3])
@given(dim=st.integers(2, 9), seed=st.integers(0, 1000))
def test_split_and_mask_formulations_agree(kind, context_dim, dim, seed):
    mask = {"half": T.half_mask, "odd-even": T.odd_even_mask, "random": _random_mask}[kind](dim)
    torch.manual_seed(seed)
    split = randomize(
        T.AffineCoupling(mask, hidden=(12, 12), context_dim=context_dim), seed=seed
    ).double()
    masked = masked_copy_of(split, fill_seed=seed + 1)
    x = torch.randn(7, dim, dtype=torch.float64)
    c = torch.randn(7, context_dim, dtype=torch.float64) if context_dim else None
    # The same exact map computed with other matrix shapes: rounding differs along the chain
    # through the conditioner and the affine map (tolerances.py), carried by its Jacobian.
    operations = mlp_operations(dim + context_dim, 12, 12) + 8
    for direction in ("forward", "inverse"):
        y_split, ld_split = getattr(split, direction)(x, c)
        y_mask, ld_mask = getattr(masked, direction)(x, c)
        growth = max(
            inf_norm_of_jacobian(lambda v, d=direction: getattr(split, d)(v, c)[0], x),
            inf_norm_of_jacobian(lambda v, d=direction: getattr(split, d)(v, c)[1][:, None], x),
        )
        bound = rounding_bound(torch.float64, operations, growth)
        for a, b in ((y_split, y_mask), (ld_split, ld_mask)):
            torch.testing.assert_close(a, b, atol=bound * (1 + b.abs().max().item()), rtol=0)


@pytest.mark.parametrize("coupling", [T.AdditiveCoupling, T.AffineCoupling])
def test_conditioner_runs_once_per_call(coupling):
    layer = randomize(coupling(T.odd_even_mask(6), hidden=(8,)))
    calls = []
    layer.conditioner.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 6)
    z, _ = layer(x)
    assert len(calls) == 1
    layer.inverse(z)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("mask", "views"),
    [
        (T.half_mask(6), True),
        (T.half_mask(6, keep_first=False), True),
        (T.odd_even_mask(7), True),
        (T.odd_even_mask(8), True),  # interleaved halves: merged by one stack
        (T.odd_even_mask(8, keep_even=False), True),
        (torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool), False),
    ],
)
def test_partition_splits_into_views_and_merges_back(mask, views):
    partition = T.Partition(mask)
    x = torch.randn(3, mask.numel())
    kept, changed = partition.split(x)
    torch.testing.assert_close(kept, x[:, mask])
    torch.testing.assert_close(changed, x[:, ~mask])
    assert (kept._base is x and changed._base is x) == views
    torch.testing.assert_close(partition.merge(kept, changed), x)


def test_partition_rejects_empty_parts():
    with pytest.raises(ValueError, match="both kept and transformed"):
        T.Partition(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 4\)"):
        T.Partition(T.half_mask(4)).split(torch.randn(2, 5))


def test_affine_scale_is_bounded():
    """Huge conditioner outputs give finite results and at most scale_bound per feature."""
    layer = T.AffineCoupling(T.half_mask(4), hidden=(8,), scale_bound=2.0)
    with torch.no_grad():
        layer.conditioner[-1].bias.fill_(1e6)
    x = torch.randn(5, 4)
    z, logdet = layer(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(logdet, torch.full((5,), 2.0 * 2))
    with torch.no_grad():
        layer.conditioner[-1].bias.fill_(-1e6)
    z, logdet = layer(x)
    torch.testing.assert_close(logdet, torch.full((5,), -2.0 * 2))
    assert (z[:, 2:] != 0).all()  # shrunk by at most e^-2 (before the shift), never to zero


def test_scale_bound_must_be_positive_and_finite():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale_bound"):
            T.AffineCoupling(T.half_mask(4), scale_bound=bad)


def test_fresh_couplings_are_the_identity():
    x = torch.randn(10, 5)
    for layer in (
        T.AffineCoupling(T.half_mask(5)),
        T.AdditiveCoupling(T.odd_even_mask(5)),
        T.MaskedAffineCoupling(T.half_mask(5)),
    ):
        z, logdet = layer(x)
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(logdet, torch.zeros(10))
