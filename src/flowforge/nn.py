"""Neural networks that compute the parameters of transforms (conditioners)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(inplace=True),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def make_activation(name: str | Callable[[], nn.Module]) -> nn.Module:
    """An activation module from its name (``"relu"``, ``"tanh"``, ...) or a constructor."""
    if callable(name):
        return name()
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    r"""A multi-layer perceptron whose last layer starts at zero.

    .. math:: h_0 = x,\quad h_{l} = \sigma(W_l h_{l-1} + b_l),\quad y = W_{L+1} h_L + b_{L+1}

    with :math:`W_{L+1} = 0, b_{L+1} = 0` at initialisation, so a transform whose parameters it
    computes starts as the identity.

    Args:
        in_features: input width.
        out_features: output width.
        hidden: widths of the hidden layers, e.g. ``(64, 64)``.
        activation: activation name (see :data:`ACTIVATIONS`) or a module constructor.

    Shapes: ``(batch, in_features) -> (batch, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), make_activation(activation)]
        last = nn.Linear(widths[-1], out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)
        self.in_features = in_features
        self.out_features = out_features

    def __getitem__(self, index: int | slice) -> nn.Module:
        # A slice of an MLP is a plain Sequential (nn.Sequential would call MLP(*layers)).
        if isinstance(index, slice):
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)
