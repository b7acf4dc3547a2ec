"""Partitions of the feature dimension used by coupling layers.

A coupling layer keeps one part of its input, ``x_A``, and transforms the other, ``x_B``,
with parameters computed from ``x_A``. The partition is given by a boolean mask ``b`` over the
last dimension: ``b_i = True`` means feature ``i`` is kept (it belongs to ``A``), as in the
Real NVP notation ``y = b * x + (1 - b) * g(x; b * x)``.

The partition splits the tensor rather than multiplying by full-width masks: contiguous and
strided parts are taken as views (no copy); only arbitrary masks gather with an index.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def half_mask(dim: int, keep_first: bool = True) -> Tensor:
    """Mask keeping the first ``dim // 2`` features (or, if not ``keep_first``, the rest)."""
    mask = torch.arange(dim) < dim // 2
    return mask if keep_first else ~mask


def odd_even_mask(dim: int, keep_even: bool = True) -> Tensor:
    """Mask keeping the features of even index (0, 2, 4, ...) or, if not ``keep_even``, odd."""
    mask = torch.arange(dim) % 2 == 0
    return mask if keep_even else ~mask


def _as_slice(indices: list[int]) -> slice | None:
    """The slice that selects exactly ``indices`` (sorted), or None if no slice does."""
    if len(indices) == 1:
        return slice(indices[0], indices[0] + 1)
    step = indices[1] - indices[0]
    if any(b - a != step for a, b in itertools.pairwise(indices)):
        return None
    return slice(indices[0], indices[-1] + 1, step)


class Partition(nn.Module):
    r"""Split ``x`` of shape ``(..., D)`` into ``(x_A, x_B)`` by a boolean mask, and merge back.

    Args:
        mask: ``(D,)`` booleans; ``True`` marks the kept (conditioning) features ``A``.
    """

    def __init__(self, mask: Tensor | Sequence[bool]) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        kept = mask.nonzero().flatten().tolist()
        changed = (~mask).nonzero().flatten().tolist()
        if not kept or not changed:
            raise ValueError(
                f"a coupling mask needs both kept and transformed features, got "
                f"{len(kept)} kept and {len(changed)} transformed of {mask.numel()}"
            )
        self.register_buffer("mask", mask, persistent=False)
        self.dim = mask.numel()
        self.kept_features = len(kept)
        self.changed_features = len(changed)
        self._kept = _as_slice(kept)
        self._changed = _as_slice(changed)
        # Merging: a concatenation when A is a prefix or a suffix, a stack when A and B
        # interleave, else a gather.
        self._kept_prefix = kept == list(range(len(kept)))
        self._kept_suffix = changed == list(range(len(changed)))
        # Interleaved halves (odd-even masks of an even width): a merge is one stack.
        even, odd = list(range(0, self.dim, 2)), list(range(1, self.dim, 2))
        self._kept_even = kept == even and changed == odd and self.dim % 2 == 0
        self._kept_odd = kept == odd and changed == even and self.dim % 2 == 0
        order = torch.tensor(kept + changed)
        self.register_buffer("_split_index", order, persistent=False)
        self.register_buffer("_merge_index", torch.argsort(order), persistent=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (..., D) -> (x_A (..., |A|), x_B (..., |B|))``."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected input of shape (batch, {self.dim}), got {tuple(x.shape)}")
        if self._kept_prefix:  # one split node: its backward is one concatenation
            return x.split((self.kept_features, self.changed_features), dim=-1)
        if self._kept_suffix:
            changed, kept = x.split((self.changed_features, self.kept_features), dim=-1)
            return kept, changed
        if self._kept is not None and self._changed is not None:
            return x[..., self._kept], x[..., self._changed]
        both = x.index_select(-1, self._split_index)
        return both[..., : self.kept_features], both[..., self.kept_features :]

    def merge(self, kept: Tensor, changed: Tensor) -> Tensor:
        """Inverse of `split()`: ``(x_A, x_B) -> x``."""
        if self._kept_prefix:
            return torch.cat((kept, changed), dim=-1)
        if self._kept_suffix:
            return torch.cat((changed, kept), dim=-1)
        if self._kept_even:  # one copy; its backward is two strided views
            return torch.stack((kept, changed), dim=-1).flatten(-2)
        if self._kept_odd:
            return torch.stack((changed, kept), dim=-1).flatten(-2)
        return torch.cat((kept, changed), dim=-1).index_select(-1, self._merge_index)

    def extra_repr(self) -> str:
        return f"mask={self.mask.int().tolist()}" if self.dim <= 16 else f"dim={self.dim}"
