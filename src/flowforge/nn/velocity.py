"""Vector fields for continuous flows: networks of a point, a time and a context."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowforge.nn.mlp import make_activation


class TimeMLP(nn.Module):
    r"""A vector field $v(x, t \mid c)$: an MLP whose every layer also reads the time.

    $$
    h_0 = [x, c],\quad h_l = \sigma\big(W_l [h_{l-1}, t] + b_l\big),\quad
    v = W_{L+1} [h_L, t] + b_{L+1}
    $$

    Time enters every layer, not only the first, so that the field can change its shape
    over time at every depth for the cost of one extra input column per layer; each
    pre-activation is affine in $t$, so a smooth activation gives a field that is smooth in
    $t$ as well as in $x$, which keeps an adaptive solver's steps long (FFJORD's "concat"
    layers). The last layer starts at zero: the flow starts as the identity, and the first
    solves take the fewest steps.

    Args:
        dim: the width of $x$ and of $v$.
        hidden: the hidden widths, e.g. ``(64, 64, 64)``.
        context_dim: the width of $c$ (0: no context).
        activation: a name of `flowforge.nn.ACTIVATIONS` or a module constructor; a smooth
            one (``"tanh"``, ``"softplus"``, ``"silu"``) for an ODE.

    Shapes: ``x (*batch, dim)``, ``t`` broadcastable to ``batch`` (a scalar or
    ``(*batch,)``), ``context (*batch, context_dim)`` -> ``(*batch, dim)``.

    Examples:
        >>> field = TimeMLP(2, hidden=(16, 16))
        >>> field(torch.randn(5, 2), torch.tensor(0.3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        context_dim: int = 0,
        activation: str | Callable[[], nn.Module] = "tanh",
    ) -> None:
        super().__init__()
        widths = [dim + context_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in itertools.pairwise(widths))
        self.activations = nn.ModuleList(make_activation(activation) for _ in hidden)
        self.out = nn.Linear(widths[-1] + 1, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dim, self.context_dim = dim, context_dim

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        time = t.to(x.dtype).expand(x.shape[:-1]).unsqueeze(-1)
        h = x if context is None else torch.cat([x, context], dim=-1)
        for layer, activation in zip(self.layers, self.activations, strict=True):
            h = activation(layer(torch.cat([h, time], dim=-1)))
        return self.out(torch.cat([h, time], dim=-1))
