"""The registry of every transform of the library, for the parametrised suite.

Each case builds a transform for a feature count ``dim`` and says the event shape it acts on
and the context width it needs. A new transform is added here, and `test_every_transform_is
_registered` fails until it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import flowforge.transforms as T


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int], T.Transform]
    min_dim: int = 1
    context_dim: int = 0
    event_shape: Callable[[int], tuple[int, ...]] = lambda dim: (dim,)

    def __str__(self) -> str:
        return self.name


def _random_mask(dim: int) -> torch.Tensor:
    """A mask with both parts non-empty that is neither a slice nor a half split."""
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[torch.randperm(dim, generator=torch.Generator().manual_seed(dim))[: dim // 2]] = True
    return mask


def _random_permutation(dim: int) -> T.RandomPermutation:
    """A random permutation that is not the identity (which a small dim can draw)."""
    for seed in range(100):
        permutation = T.RandomPermutation(dim, seed=seed)
        if not torch.equal(permutation.permutation, torch.arange(dim)):
            return permutation
    raise AssertionError("unreachable for dim >= 2")


SMALL = (16, 16)

CASES = [
    Case("additive-half", lambda d: T.AdditiveCoupling(T.half_mask(d), hidden=SMALL), 2),
    Case("additive-odd-even", lambda d: T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case("affine-half", lambda d: T.AffineCoupling(T.half_mask(d), hidden=SMALL), 2),
    Case(
        "affine-second-half",
        lambda d: T.AffineCoupling(T.half_mask(d, keep_first=False), hidden=SMALL),
        2,
    ),
    Case("affine-odd-even", lambda d: T.AffineCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case("affine-random-mask", lambda d: T.AffineCoupling(_random_mask(d), hidden=SMALL), 2),
    Case(
        "affine-tanh-conditional",
        lambda d: T.AffineCoupling(T.half_mask(d), hidden=SMALL, activation="tanh", context_dim=3),
        2,
        context_dim=3,
    ),
    Case(
        "additive-conditional",
        lambda d: T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL, context_dim=2),
        2,
        context_dim=2,
    ),
    Case("masked-affine", lambda d: T.MaskedAffineCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case(
        "masked-affine-conditional",
        lambda d: T.MaskedAffineCoupling(_random_mask(d), hidden=SMALL, context_dim=2),
        2,
        context_dim=2,
    ),
    Case("diagonal-scaling", T.DiagonalScaling),
    Case("actnorm", T.ActNorm),
    Case(
        "actnorm-image",
        lambda d: T.ActNorm(d, event_dims=3),
        event_shape=lambda d: (d, 2, 3),
    ),
    Case("reverse", lambda d: T.ReversePermutation(), 2),
    Case("permutation", lambda d: T.Permutation(torch.arange(d).roll(1)), 2),
    Case("random-permutation", lambda d: _random_permutation(d), 2),
    Case("planar", T.Planar),
    Case("radial", T.Radial),
    Case("inverse-planar", lambda d: T.Inverse(T.Planar(d))),
    Case("inverse-radial", lambda d: T.Radial(d).inv),
    Case(
        "compose",
        lambda d: T.Compose(
            T.ActNorm(d),
            T.AffineCoupling(T.half_mask(d), hidden=SMALL),
            T.RandomPermutation(d, seed=1),
            T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL),
            T.Planar(d).inv,
            T.DiagonalScaling(d),
        ),
        2,
    ),
]


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initial value by Gaussian noise of std ``scale``,
    and mark ActNorm layers initialised, so no test sees only the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_(scale * noise.to(p.dtype))
        for m in module.modules():
            if isinstance(m, T.ActNorm):
                m.initialized.fill_(True)
    return module
