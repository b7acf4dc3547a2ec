r"""MADE: the masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP whose weight matrices are masked so that output ``i`` depends only on the inputs that
come before ``i`` in an ordering. Every unit gets a degree: input ``i`` the degree
:math:`d_i \in \{1..D\}` (its position in the ordering), each hidden unit a degree
:math:`m \in \{1..D-1\}`, context inputs degree 0. A connection from a unit of degree
:math:`a` into a hidden unit of degree :math:`m` is kept iff :math:`m \ge a`; into the
outputs of feature ``i`` iff :math:`d_i > a`. Then :math:`\partial y_i / \partial x_j = 0`
unless :math:`d_j < d_i`: the Jacobian is strictly triangular under the ordering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import make_activation


def input_degrees(features: int, order: str | Sequence[int] = "natural", seed: int = 0) -> Tensor:
    """Degrees ``(features,)`` in ``1..features``: feature ``i`` is the ``d_i``-th in the order.

    ``order`` is ``"natural"`` (0, 1, ..., D-1), ``"reverse"``, ``"random"`` (a permutation
    drawn with ``seed``) or an explicit sequence of the feature indices in order.
    """
    if isinstance(order, str):
        if order == "natural":
            order = list(range(features))
        elif order == "reverse":
            order = list(range(features - 1, -1, -1))
        elif order == "random":
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(features, generator=generator).tolist()
        else:
            raise ValueError(
                f"unknown order {order!r}; expected natural, reverse, random or a list"
            )
    order = [int(i) for i in order]
    if sorted(order) != list(range(features)):
        raise ValueError(f"order must be a permutation of 0..{features - 1}, got {order}")
    degrees = torch.empty(features, dtype=torch.long)
    degrees[order] = torch.arange(1, features + 1)
    return degrees


def hidden_degrees(features: int, width: int) -> Tensor:
    """Degrees ``(width,)`` of a hidden layer, cycling through ``1..D-1`` (all 0 for D = 1,
    where hidden units may see only the context)."""
    if features == 1:
        return torch.zeros(width, dtype=torch.long)
    return torch.arange(width) % (features - 1) + 1


class MaskedLinear(nn.Linear):
    r""":math:`y = (M \odot W) x + b` with a fixed binary mask ``M`` ``(out, in)``."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""An autoregressive network: ``params_per_feature`` outputs per input feature, each
    depending only on the features before it in the ordering (and on the context).

    .. math:: h_0 = [x, c],\quad h_l = \sigma(M_l \odot W_l\, h_{l-1} + b_l)
              \ (+\, h_{l-1} \text{ if residual}),\quad y = M_{L+1} \odot W_{L+1}\, h_L + b_{L+1}

    The last layer starts at zero, so a transform built on it starts as the identity. With
    ``residual=True`` every hidden layer after the first adds its input (all hidden widths
    must then be equal; the hidden units keep their degrees, so the masks stay valid).

    Args:
        features: ``D``, the autoregressive inputs.
        params_per_feature: ``P``, outputs per feature.
        hidden: hidden widths, e.g. ``(64, 64)``.
        context_dim: width of a context appended to the input (degree 0: seen by every unit).
        order: the autoregressive ordering (see :func:`input_degrees`).
        residual: add residual connections between hidden layers.
        activation: activation name or constructor.
        seed: for ``order="random"``.

    Shapes: ``(batch, D + context_dim)`` (the features, then the context) ``-> (batch, D, P)``.
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: str | Sequence[int] = "natural",
        residual: bool = False,
        activation: str | Callable[[], nn.Module] = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if residual and len(set(hidden)) > 1:
            raise ValueError(f"a residual MADE needs equal hidden widths, got {hidden}")
        self.features, self.params_per_feature = features, params_per_feature
        self.context_dim, self.residual = context_dim, residual
        degrees = input_degrees(features, order, seed)
        self.register_buffer("degrees", degrees, persistent=False)
        previous = torch.cat((degrees, torch.zeros(context_dim, dtype=torch.long)))
        layers = []
        for width in hidden:
            current = hidden_degrees(features, width)
            layers.append(MaskedLinear(current[:, None] >= previous[None, :]))
            previous = current
        self.hidden = nn.ModuleList(layers)
        self.activations = nn.ModuleList(make_activation(activation) for _ in hidden)
        out_degrees = degrees.repeat_interleave(params_per_feature)
        self.output = MaskedLinear(out_degrees[:, None] > previous[None, :])
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, h: Tensor) -> Tensor:
        for i, (layer, activation) in enumerate(zip(self.hidden, self.activations, strict=True)):
            update = activation(layer(h))
            h = h + update if self.residual and i > 0 else update
        return self.output(h).unflatten(-1, (self.features, self.params_per_feature))
