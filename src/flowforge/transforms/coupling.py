r"""Coupling layers (Dinh et al. 2014, 2016).

A coupling layer keeps the features ``x_A`` chosen by its mask and transforms the others
elementwise, with parameters that a conditioner network computes from ``x_A`` (and the context):

$$
z_A = x_A, \qquad z_B = g(x_B;\ \theta(x_A, c))
$$

The Jacobian is triangular, so $\log|\det J| = \sum_i \log|g'(x_{B,i})|$. The conditioner
runs once per call, in either direction, on the split-off part (no full-width masks).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.nn.mlp import MLP
from flowforge.transforms.base import Transform
from flowforge.transforms.partition import Partition


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    r"""$B \tanh(x / B)$: the identity near 0, smoothly bounded to $(-B, B)$."""
    return bound * torch.tanh(x / bound)


def check_bound(name: str, bound: float | None, optional: bool = False) -> None:
    """Raise a one-line ValueError unless ``bound`` is a positive finite number (or, if
    ``optional``, None)."""
    if optional and bound is None:
        return
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 < bound < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {bound!r}")


def bounded_affine(
    x: Tensor, raw_scale: Tensor, shift: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""$y = x e^{s} + t$ (``inverse``: $y = (x - t) e^{-s}$) with the bounded
    log-scale $s = B\tanh(\hat s / B)$, and $\pm\sum s$ over the last dimension."""
    log_scale = soft_clamp(raw_scale, bound)
    if inverse:
        return (x - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
    return torch.addcmul(shift, x, log_scale.exp()), log_scale.sum(-1)


def check_context(context: Tensor | None, rows: int, context_dim: int) -> Tensor:
    """``context`` if it is ``(rows, context_dim)``, else a one-line ValueError."""
    if context is None or context.shape != (rows, context_dim):
        got = "none" if context is None else tuple(context.shape)
        raise ValueError(
            f"this layer is conditional: expected context of shape ({rows}, {context_dim}), "
            f"got {got}"
        )
    return context


def with_context(h: Tensor, context: Tensor | None, context_dim: int) -> Tensor:
    """The conditioner input ``(batch, F)``: ``h`` with the context appended when the layer
    is conditional."""
    if not context_dim:
        return h
    return torch.cat((h, check_context(context, h.shape[0], context_dim)), dim=-1)


class Coupling(Transform):
    r"""Base class: split by mask, run the conditioner once, transform ``x_B`` elementwise.

    Subclasses set ``params_per_feature`` and implement `transform_part()` and
    `untransform_part()` on ``x_B`` given the conditioner output ``(batch, |B| * P)``.

    Args:
        mask: ``(D,)`` booleans, ``True`` for the kept features (see `Partition`).
        hidden: hidden widths of the conditioner MLP.
        activation: activation of the conditioner MLP.
        context_dim: width of the optional context concatenated to the conditioner input.
        conditioner: a network to use instead of the MLP, mapping
            ``(batch, |A| + context_dim) -> (batch, |B| * params_per_feature)``.
    """

    params_per_feature: int

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
        context_dim: int = 0,
        conditioner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.partition = Partition(mask)
        self.context_dim = context_dim
        if conditioner is None:
            conditioner = MLP(
                self.partition.kept_features + context_dim,
                self.partition.changed_features * self.params_per_feature,
                hidden,
                activation,
            )
        self.conditioner = conditioner

    def _parameters_from(self, kept: Tensor, context: Tensor | None) -> Tensor:
        return self.conditioner(with_context(kept, context, self.context_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = self.partition.split(x)
        z_b, logdet = self.transform_part(x_b, self._parameters_from(x_a, context))
        return self.partition.merge(x_a, z_b), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = self.partition.split(z)
        x_b, logdet = self.untransform_part(z_b, self._parameters_from(z_a, context))
        return self.partition.merge(z_a, x_b), logdet

    @abstractmethod
    def transform_part(self, x_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_B, theta) -> (z_B, sum log|dz_B/dx_B|)``."""

    @abstractmethod
    def untransform_part(self, z_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_B, theta) -> (x_B, sum log|dx_B/dz_B|)``."""


class AdditiveCoupling(Coupling):
    r"""NICE's additive coupling: $z_B = x_B + t(x_A)$, $\log|\det J| = 0$."""

    params_per_feature = 1

    def transform_part(self, x_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x_b + params, x_b.new_zeros(x_b.shape[0])

    def untransform_part(self, z_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z_b - params, z_b.new_zeros(z_b.shape[0])


class AffineCoupling(Coupling):
    r"""Real NVP's affine coupling with a bounded log-scale.

    $$
    z_B = x_B \odot e^{s} + t, \qquad s = B \tanh(\hat s / B), \qquad
    \log|\det J| = \textstyle\sum_i s_i
    $$

    where $(\hat s, t) = \theta(x_A, c)$. The soft clamp keeps every scale factor in
    $(e^{-B}, e^{B})$, so one layer can neither overflow nor collapse a feature to zero:
    an unbounded ``exp`` is the usual source of NaN losses in coupling flows. It is the identity
    near zero, so the zero-initialised conditioner still gives the identity map.

    Args:
        scale_bound: ``B`` above, the largest log-scale one layer may apply (default 3).
        **kwargs: see `Coupling`.
    """

    params_per_feature = 2

    def __init__(self, mask: Tensor | Sequence[bool], *, scale_bound: float = 3.0, **kwargs: Any):
        check_bound("scale_bound", scale_bound)
        super().__init__(mask, **kwargs)
        self.scale_bound = scale_bound

    def transform_part(self, x_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return bounded_affine(x_b, *params.chunk(2, dim=-1), self.scale_bound)

    def untransform_part(self, z_b: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return bounded_affine(z_b, *params.chunk(2, dim=-1), self.scale_bound, inverse=True)

    def extra_repr(self) -> str:
        return f"scale_bound={self.scale_bound}"


class MaskedAffineCoupling(Transform):
    r"""The binary-mask formulation of the affine coupling (Dinh et al. 2016, eq. 9).

    $$
    z = b \odot x + (1 - b) \odot \big(x \odot e^{s(b \odot x)} + t(b \odot x)\big),
    \qquad \log|\det J| = \textstyle\sum_i (1 - b_i)\, s_i(b \odot x)
    $$

    with $s = B\tanh(\hat s/B)$ as in `AffineCoupling`. The conditioner maps the
    full width ``D (+ context) -> 2D``; half of its inputs are zero and half of its outputs are
    discarded. It computes the same function as `AffineCoupling` (a test shows it) at
    about twice the cost, and is kept as the reference for the notation of the paper.

    Args:
        mask: ``(D,)`` booleans ``b``, ``True`` for the kept features.
        hidden: as in `Coupling`.
        activation: as in `Coupling`.
        context_dim: as in `Coupling`.
        scale_bound: ``B`` above.
    """

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
        context_dim: int = 0,
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        Partition(mask)  # validates that both parts are non-empty
        self.register_buffer("mask", mask, persistent=False)
        self.context_dim = context_dim
        self.scale_bound = scale_bound
        self.conditioner = MLP(mask.numel() + context_dim, 2 * mask.numel(), hidden, activation)

    def _scale_shift(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = with_context(kept, context, self.context_dim)
        raw_scale, shift = self.conditioner(h).chunk(2, dim=-1)
        changed = ~self.mask
        return soft_clamp(raw_scale, self.scale_bound) * changed, shift * changed

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(x * self.mask, context)
        return torch.addcmul(shift, x, log_scale.exp()), log_scale.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(z * self.mask, context)
        return (z - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
