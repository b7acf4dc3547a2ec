"""Fixed permutations of the features (volume preserving: log|det J| = 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowforge.transforms.base import Transform


class Permutation(Transform):
    r"""$z_i = x_{\pi(i)}$ for a fixed permutation $\pi$ of ``range(dim)``.

    Args:
        permutation: ``(dim,)`` integer tensor holding each index exactly once.
    """

    def __init__(self, permutation: Tensor) -> None:
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        dim = permutation.numel()
        if permutation.dim() != 1 or not torch.equal(permutation.sort().values, torch.arange(dim)):
            raise ValueError(f"expected a permutation of range({dim}), got {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.permutation), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(-1, self.inverse_permutation), z.new_zeros(z.shape[0])


class ReversePermutation(Transform):
    """Reverses the order of the features: $z_i = x_{D-1-i}$; its own inverse."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.flip(-1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[0])


class RandomPermutation(Permutation):
    """A permutation drawn once at construction (from ``seed`` if given) and kept in the state."""

    def __init__(self, dim: int, seed: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        super().__init__(torch.randperm(dim, generator=generator))
