r"""Affine couplings of images ``(batch, C, H, W)`` with convolutional conditioners.

Two partitions of Real NVP (Dinh et al. 2016, sec. 3.4): a spatial checkerboard, and the
channels split in halves. Both use the bounded log-scale of
`AffineCoupling`:

$$
z_B = x_B \odot e^{s} + t,\quad s = B\tanh(\hat s / B),\quad
(\hat s, t) = \mathrm{NN}(x_A, c),\quad \log|\det J| = \textstyle\sum s
$$

A conditional coupling (``context_dim = k > 0``) gives its conditioner the context
``(batch, k)`` as ``k`` extra input channels, each constant over the image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowforge.nn.mlp import ConvResNet
from flowforge.transforms.base import Transform
from flowforge.transforms.coupling import check_bound, check_context, soft_clamp


def with_context_maps(h: Tensor, context: Tensor | None, context_dim: int) -> Tensor:
    """The conditioner input ``(batch, C + k, H, W)``: ``h`` with the context ``(batch, k)``
    appended as constant channels when the layer is conditional."""
    if not context_dim:
        return h
    context = check_context(context, h.shape[0], context_dim)
    return torch.cat((h, context[:, :, None, None].expand(-1, -1, *h.shape[2:])), dim=1)


def checkerboard(height: int, width: int, parity: int = 0, device=None) -> Tensor:
    """``(1, H, W)`` booleans, True where ``(i + j) % 2 == parity`` (the kept pixels)."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    return ((i + j) % 2 == parity).unsqueeze(0)


class CheckerboardAffineCoupling(Transform):
    r"""Real NVP's checkerboard coupling: the pixels with ``(i + j) % 2 == parity`` are kept.

    $$
    z = x \odot e^{(1-b) \odot s(b \odot x)} + (1 - b) \odot t(b \odot x)
    $$

    A convolution needs the full image grid, so the conditioner sees ``b * x`` (the kept
    pixels, zeros elsewhere) and only the outputs at the other pixels are used.

    Args:
        channels: ``C``.
        parity: 0 or 1, which colour of the checkerboard is kept.
        hidden_channels: channels of the `ConvResNet`.
        blocks: residual blocks of the `ConvResNet`.
        activation: of the `ConvResNet`.
        scale_bound: ``B``, the largest log-scale one layer applies.
        shift_bound: if given, ``t`` is soft-clamped to ``(-T, T)`` as well (see
            `ChannelAffineCoupling`).
        context_dim: width ``k`` of an optional context (see the module docstring).

    Shapes: ``(batch, C, H, W) -> (batch, C, H, W)``, context ``(batch, k)``.
    """

    def __init__(
        self,
        channels: int,
        parity: int = 0,
        hidden_channels: int = 64,
        blocks: int = 1,
        activation: str | Callable[[], nn.Module] = "relu",
        scale_bound: float = 3.0,
        shift_bound: float | None = None,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        check_bound("scale_bound", scale_bound)
        check_bound("shift_bound", shift_bound, optional=True)
        self.parity = parity
        self.scale_bound = scale_bound
        self.shift_bound = shift_bound
        self.context_dim = context_dim
        self.conditioner = ConvResNet(
            channels + context_dim, 2 * channels, hidden_channels, blocks, activation
        )

    def _scale_shift(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        kept = checkerboard(x.shape[2], x.shape[3], self.parity, x.device)
        h = with_context_maps(x * kept, context, self.context_dim)
        raw_scale, shift = self.conditioner(h).chunk(2, dim=1)
        if self.shift_bound is not None:
            shift = soft_clamp(shift, self.shift_bound)
        return soft_clamp(raw_scale, self.scale_bound) * ~kept, shift * ~kept

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(x, context)
        return x * log_scale.exp() + shift, log_scale.flatten(1).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(z, context)
        return (z - shift) * torch.exp(-log_scale), -log_scale.flatten(1).sum(-1)

    def extra_repr(self) -> str:
        return (
            f"parity={self.parity}, scale_bound={self.scale_bound}, shift_bound={self.shift_bound}"
        )


class ChannelAffineCoupling(Transform):
    r"""The channel-wise coupling of Real NVP and Glow: one half of the channels is kept.

    $$
    z_A = x_A, \qquad z_B = x_B \odot e^{s(x_A)} + t(x_A)
    $$

    with ``A`` the first ``C // 2`` channels (``keep_first=True``) or the last ``C - C // 2``.

    Args:
        channels: ``C`` (at least 2).
        keep_first: which half is kept.
        hidden_channels: channels of the default `ConvResNet`.
        blocks: residual blocks of the default `ConvResNet`.
        activation: of the default `ConvResNet`.
        scale_bound: ``B``, the largest log-scale one layer applies.
        shift_bound: if given, ``T``: the shift is soft-clamped too, $t = T\tanh(\hat t/T)$
            (no effect on the log-determinant). A ReLU conditioner's shift grows in proportion
            to its input, so in a deep stack an unusual input can be amplified layer after
            layer into an astronomically small density; a bound turns that growth from
            multiplicative into at most ``T`` per layer.
        conditioner: a network to use instead,
            ``(batch, |A| + k, H, W) -> (batch, 2|B|, H, W)``.
        context_dim: width ``k`` of an optional context (see the module docstring).

    Shapes: ``(batch, C, H, W) -> (batch, C, H, W)``, context ``(batch, k)``.
    """

    def __init__(
        self,
        channels: int,
        keep_first: bool = True,
        hidden_channels: int = 64,
        blocks: int = 1,
        activation: str | Callable[[], nn.Module] = "relu",
        scale_bound: float = 3.0,
        shift_bound: float | None = None,
        conditioner: nn.Module | None = None,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
        check_bound("scale_bound", scale_bound)
        check_bound("shift_bound", shift_bound, optional=True)
        self.kept = channels // 2 if keep_first else channels - channels // 2
        self.keep_first = keep_first
        self.scale_bound = scale_bound
        self.shift_bound = shift_bound
        self.context_dim = context_dim
        changed = channels - self.kept
        if conditioner is None:
            conditioner = ConvResNet(
                self.kept + context_dim, 2 * changed, hidden_channels, blocks, activation
            )
        self.conditioner = conditioner

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.keep_first:
            return x[:, : self.kept], x[:, self.kept :]
        return x[:, -self.kept :], x[:, : -self.kept]

    def _merge(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat((kept, changed) if self.keep_first else (changed, kept), dim=1)

    def _scale_shift(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = with_context_maps(kept, context, self.context_dim)
        raw_scale, shift = self.conditioner(h).chunk(2, dim=1)
        if self.shift_bound is not None:
            shift = soft_clamp(shift, self.shift_bound)
        return soft_clamp(raw_scale, self.scale_bound), shift

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        log_scale, shift = self._scale_shift(x_a, context)
        z_b = x_b * log_scale.exp() + shift
        return self._merge(x_a, z_b), log_scale.flatten(1).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = self._split(z)
        log_scale, shift = self._scale_shift(z_a, context)
        x_b = (z_b - shift) * torch.exp(-log_scale)
        return self._merge(z_a, x_b), -log_scale.flatten(1).sum(-1)

    def extra_repr(self) -> str:
        return (
            f"kept={self.kept}, keep_first={self.keep_first}, scale_bound={self.scale_bound}, "
            f"shift_bound={self.shift_bound}"
        )
