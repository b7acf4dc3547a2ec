r"""Preprocessing of image data as a transform, so that its log-determinant is counted.

Pixels ``k`` in ``[0, L)`` are dequantised by the data pipeline to $x = (k + u)/L$ in
$[0, 1]$ (`flowforge.datasets.Split.dequantize()`); the flow's density is over
``x``, and the conversion to bits/dim adds the $D \log L$ of the scaling by ``1/L``
(`flowforge.datasets.Split.bits_per_dim()`). `Logit` maps ``[0, 1]`` to the real
line, as Real NVP does, with its log-determinant in the likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowforge.transforms.base import Transform


class Logit(Transform):
    r"""Real NVP's logit preprocessing of values in ``[0, 1]`` (Dinh et al. 2016, sec. 4.1).

    $$
    s = \alpha + (1 - 2\alpha)\,x, \qquad y = \log s - \log(1 - s), \qquad
    \log|\det J| = \textstyle\sum_i \log(1 - 2\alpha) - \log s_i - \log(1 - s_i)
    $$

    ``alpha`` keeps ``y`` finite at pixels 0 and 1 (the paper uses 0.05). With
    ``alpha = 0`` and a standard logistic base the flow is exactly uniform on ``[0, 1]^D``.
    Its domain is ``s`` in ``[0, 1]``, slightly wider than ``[0, 1]`` when ``alpha > 0`` (so
    samples may leave ``[0, 1]`` by up to ``alpha / (1 - 2 alpha)``: clip them for display);
    values outside it raise a ValueError (pass dequantised pixels, not 0..255).

    Shapes: any ``(batch, *event)``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        if s.numel() and not torch.compiler.is_compiling():
            low, high = torch.aminmax(s)
            if low < 0 or high > 1:
                raise ValueError(
                    f"Logit expects values in [0, 1] (dequantised pixels (k + u) / levels), got "
                    f"values in [{x.min().item():.4g}, {x.max().item():.4g}]"
                )
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        logdet = math.log1p(-2 * self.alpha) - log_s - log_1ms
        return log_s - log_1ms, logdet.flatten(1).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        logdet = F.logsigmoid(z) + F.logsigmoid(-z) - math.log1p(-2 * self.alpha)
        return x, logdet.flatten(1).sum(-1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
