"""What a dataset is: three deterministic splits, and how to read their values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    r"""One split of a dataset: samples ``x`` of shape ``(N, *event_shape)``, float32.

    Continuous data (``levels is None``) are modelled as they are. Discrete data hold integer
    values ``k`` in ``[0, levels)`` (pixels: ``levels = 256``); they are modelled in
    $[0, 1]^D$ after uniform dequantisation, $x = (k + u)/L$,
    $u \sim U(0, 1)^D$, the convention of the NICE paper. Then

    $$
    \text{bits/dim} = \frac{\mathrm{NLL}_{[0,1]} + D \log L}{D \log 2}
    $$

    is an upper bound on the discrete model's code length per dimension.

    Args:
        x: the samples.
        levels: number of discrete levels per dimension, or None for continuous data.
        context: optional conditioning values ``(N, k)`` paired with ``x``.
    """

    x: Tensor
    levels: int | None = None
    context: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def event_shape(self) -> torch.Size:
        return self.x.shape[1:]

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def discrete(self) -> bool:
        return self.levels is not None

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Model-space values of a batch: ``(x + u) / levels`` for discrete data, else ``x``."""
        if self.levels is None:
            return x
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + noise) / self.levels

    def bits_per_dim(self, nll: float) -> float:
        """Bits/dim of a mean NLL (nats, model space) on discrete data."""
        if self.levels is None:
            raise ValueError("bits/dim is defined for discrete data only (levels is None)")
        return (nll + self.dim * math.log(self.levels)) / (self.dim * math.log(2))

    def flatten(self) -> Split:
        """The same split with each sample flattened to a vector ``(N, D)``."""
        return replace(self, x=self.x.reshape(len(self), self.dim))  # also for N = 0


@dataclass(frozen=True)
class Dataset:
    """A named dataset with train / validation / test splits that are fixed by the seed.

    ``entropy`` is the differential entropy $H(p)$ in nats of the distribution the data
    were drawn from, where it is known (the 2-D toys), so that a model's test NLL minus it
    estimates $KL(p \\| q)$. ``log_prob`` is that distribution's log-density.
    """

    name: str
    train: Split
    val: Split
    test: Split
    entropy: float | None = None
    log_prob: Callable[[Tensor], Tensor] | None = None

    @property
    def event_shape(self) -> torch.Size:
        return self.train.event_shape

    def flatten(self) -> Dataset:
        """The same dataset with samples flattened to vectors (for MLP-based flows)."""
        return replace(
            self, train=self.train.flatten(), val=self.val.flatten(), test=self.test.flatten()
        )


def split_three(
    x: Tensor,
    fractions: tuple[float, float] = (0.8, 0.1),
    seed: int = 0,
    levels: int | None = None,
) -> tuple[Split, Split, Split]:
    """Shuffle ``x`` with ``seed`` and cut it into train / val / test by ``fractions``
    (train, val; test gets the rest)."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_train = round(fractions[0] * x.shape[0])
    n_val = round(fractions[1] * x.shape[0])
    x = x[order]
    parts = x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :]
    return tuple(Split(part.contiguous(), levels=levels) for part in parts)


def pixel_dataset(
    name: str, train: Tensor, val: Tensor, test: Tensor, n: int | None = None, seed: int = 0
) -> Dataset:
    """A dataset of 8-bit images from uint8 tensors ``(N, C, H, W)``: float32 pixel values,
    ``levels=256``. ``n`` keeps a random subset of ``n`` training images chosen with ``seed``
    (in their original order); without ``n`` the seed is unused."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(train):
            raise ValueError(f"n must be an integer in [1, {len(train)}], got {n!r}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = train[order[:n].sort().values]
    splits = (Split(part.to(torch.float32), levels=256) for part in (train, val, test))
    return Dataset(name, *splits)
