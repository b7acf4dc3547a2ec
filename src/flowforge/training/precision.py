r"""Training in bfloat16: the networks' matrix products in bf16, everything else in float32.

``fit(precision="bf16")`` runs the training step under ``torch.autocast`` with bf16, which
computes linear and convolution layers in bf16, and casts each such layer's output back to
float32 at once. So only the networks' products are in bf16 (8 bits of mantissa, a unit
round-off $u = 2^{-8}$); the couplings' scales and shifts, the log-determinants, the base
log-density and the loss are float32 sums of float32 terms. Validation is in float32.

The loss then differs from float32's by the products' rounding: each product's output
carries a relative error of order $u$, so a loss of size $|\ell|$ built on them moves by
about $u\,(1 + |\ell|)$ per layer of products it passes (the test bounds it so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS = ("float32", "bf16")
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_precision(precision: str, dtype: torch.dtype, device: torch.device) -> None:
    """One-line errors: an unknown precision, bf16 for a flow that is not float32, or a
    device without bf16."""
    if precision == "float32":
        return
    if dtype != torch.float32:
        raise ValueError(
            f"precision='bf16' trains a float32 flow with bf16 products; this flow is "
            f"{str(dtype).removeprefix('torch.')}"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16': this GPU ({device}) has no bf16 support")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision='bf16' runs on a CPU or a CUDA GPU, not {device.type}")


def _to_float32(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    return output.float()


class Bf16Products(nn.Module):
    """``module``'s forward under bf16 autocast, with every linear and convolution layer's
    output cast back to float32 (hooks, removed by `remove()`)."""

    def __init__(self, module: nn.Module, device_type: str) -> None:
        super().__init__()
        self.module, self.device_type = module, device_type
        self.hooks = [
            layer.register_forward_hook(_to_float32)
            for layer in module.modules()
            if isinstance(layer, LAYERS)
        ]

    def forward(self, *inputs: Any) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.module(*inputs).float()

    def remove(self) -> None:
        """Take the hooks off the layers (the flow is as it was)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


__all__ = ["PRECISIONS", "Bf16Products", "check_precision"]
