"""Glow's invertible 1x1 convolution, parametrised by an LU decomposition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.transforms.base import Transform


class InvertibleConv1x1(Transform):
    r"""A learned channel-mixing matrix applied at every pixel (Kingma & Dhariwal 2018).

    $$
    z_{:,h,w} = W x_{:,h,w}, \qquad W = P L (U + \operatorname{diag}(\sigma \odot e^{s})),
    \qquad \log|\det J| = H W \textstyle\sum_c s_c
    $$

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper
    triangular, ``\sigma`` fixed signs and ``s`` learned log-magnitudes, so the log-determinant
    costs ``O(C)`` and the inverse two triangular solves. ``W`` starts as a random rotation.

    Args:
        channels: ``C``.
        seed: seeds the initial rotation (None: the global generator).

    Shapes: ``(batch, C, H, W) -> (batch, C, H, W)``.
    """

    def __init__(self, channels: int, seed: int | None = None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", diagonal.sign())
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_scale = nn.Parameter(diagonal.abs().log())

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.sign.numel(), dtype=self.sign.dtype, device=self.sign.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_scale.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The ``(C, C)`` matrix ``W``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def _logdet(self, x: Tensor) -> Tensor:
        return (x.shape[2] * x.shape[3] * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.conv2d(x, self.weight()[:, :, None, None]), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        # W^{-1} = U^{-1} L^{-1} P^T, by two triangular solves.
        lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        weight_inv = torch.linalg.solve_triangular(upper, lower_inv, upper=True)
        weight_inv = weight_inv @ self.permutation.T
        return F.conv2d(z, weight_inv[:, :, None, None]), -self._logdet(z)

    def extra_repr(self) -> str:
        return f"channels={self.sign.numel()}"
