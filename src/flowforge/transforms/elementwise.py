"""Elementwise affine transforms: NICE's diagonal scaling and Glow's ActNorm."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowforge.transforms.base import Transform


class DiagonalScaling(Transform):
    r"""NICE's top layer: $z = x \odot e^{s}$, $\log|\det J| = \sum_i s_i$.

    ``s`` is a learnable ``(dim,)`` vector, initialised to zero (the identity).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(z.shape[0])


class ActNorm(Transform):
    r"""Activation normalisation (Kingma & Dhariwal 2018) with data-dependent initialisation.

    $$
    z = (x - \mu) \odot e^{-\ell}, \qquad
    \log|\det J| = -\frac{N}{F} \textstyle\sum_f \ell_f
    $$

    where ``F`` is the number of features (channels) and ``N`` the number of elements of one
    sample, so every spatial position of an image shares its channel's parameters.

    Initialisation: the first forward (data -> latent) call sets $\mu$ and
    $e^{\ell}$ to the batch's per-feature mean and standard deviation, so the output
    starts with zero mean and unit variance. A feature whose standard deviation is below
    ``eps`` (a constant feature) keeps scale 1 instead of being divided by ~0. A first
    inverse call that tracks gradients in training mode (variational inference, which trains
    the generative direction) starts from the identity instead. Either way the ``initialized``
    flag is set; it is a buffer, so it is saved in the state dict and a loaded model is not
    re-initialised. An empty batch has no statistics: it passes through without initialising.

    Args:
        features: number of features (``D`` for vectors, ``C`` for images).
        event_dims: dimensions of one sample: 1 for ``(D,)``, 3 for ``(C, H, W)``.
        eps: standard deviations below this are treated as zero.
    """

    def __init__(self, features: int, event_dims: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        shape = (features,) + (1,) * (event_dims - 1)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from a batch ``x`` so that ``forward(x)`` is standardised."""
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > self.eps, std, torch.ones_like(std))
        self.loc.copy_(mean.view_as(self.loc))
        self.log_scale.copy_(std.log().view_as(self.log_scale))
        self.initialized.fill_(True)

    def _logdet(self, x: Tensor) -> Tensor:
        positions = math.prod(x.shape[1:]) // self.log_scale.numel()
        return (-positions * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[0] > 0 and not self.initialized:
            self.initialize(x)
        return (x - self.loc) * torch.exp(-self.log_scale), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if z.shape[0] > 0 and not self.initialized and self.training and torch.is_grad_enabled():
            self.initialized.fill_(True)
        return z * self.log_scale.exp() + self.loc, -self._logdet(z)

    def extra_repr(self) -> str:
        return f"features={self.loc.shape[0]}, initialized={bool(self.initialized)}"
