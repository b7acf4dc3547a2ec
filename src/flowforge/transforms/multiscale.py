r"""The multi-scale architecture of Real NVP (Dinh et al. 2016, sec. 3.6)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowforge.transforms.base import Transform


class FactorOut(Transform):
    r"""Factor out the first ``factored`` channels and transform only the rest:

    $$
    z = \big(x_{1:k},\ g(x_{k+1:C})\big), \qquad
    \log|\det J| = \log|\det \partial g / \partial x_{k+1:C}|
    $$

    The factored-out channels go straight to the base distribution; deeper scales work on
    fewer channels. Nesting ``FactorOut`` inside ``g`` gives the multi-scale architecture;
    the latent keeps the data's shape, with each scale's factored part in its own channels.

    Args:
        transform: ``g``, applied to channels ``k+1 .. C``.
        factored: ``k``.

    Shapes: ``(batch, C, H, W) -> (batch, C, H, W)``.
    """

    def __init__(self, transform: Transform, factored: int) -> None:
        super().__init__()
        if factored < 1:
            raise ValueError(f"factored must be a positive number of channels, got {factored}")
        self.transform = transform
        self.factored = factored

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_rest, logdet = self.transform(x[:, self.factored :], context)
        return torch.cat((x[:, : self.factored], z_rest), dim=1), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_rest, logdet = self.transform.inverse(z[:, self.factored :], context)
        return torch.cat((z[:, : self.factored], x_rest), dim=1), logdet

    def extra_repr(self) -> str:
        return f"factored={self.factored}"
