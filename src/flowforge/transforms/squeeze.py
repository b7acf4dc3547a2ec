"""Space-to-depth reshaping of images (Dinh et al. 2016, section 3.6)."""

from __future__ import annotations

from torch import Tensor

from flowforge.transforms.base import Transform


class Squeeze(Transform):
    r"""Trade space for channels: each 2x2 block of pixels becomes 4 channels of one pixel.

    $$
    z_{4c + 2i + j,\ h,\ w} = x_{c,\ 2h + i,\ 2w + j}, \qquad \log|\det J| = 0
    $$

    Shapes: ``(batch, C, H, W) -> (batch, 4C, H/2, W/2)``; ``H`` and ``W`` must be even.
    The inverse (``Squeeze().inv``) puts the pixels back.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        if c % 4:
            raise ValueError(f"unsqueezing needs a multiple of 4 channels, got {c}")
        x = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w), z.new_zeros(b)
