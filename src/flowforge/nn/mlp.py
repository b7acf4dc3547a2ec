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
    "softplus": nn.Softplus,
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

    $$
    h_0 = x,\quad h_{l} = \sigma(W_l h_{l-1} + b_l),\quad y = W_{L+1} h_L + b_{L+1}
    $$

    with $W_{L+1} = 0, b_{L+1} = 0$ at initialisation, so a transform whose parameters it
    computes starts as the identity.

    Args:
        in_features: input width.
        out_features: output width.
        hidden: widths of the hidden layers, e.g. ``(64, 64)``.
        activation: activation name (see `ACTIVATIONS`) or a module constructor.

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


def _weight_normed(conv: nn.Conv2d) -> nn.Module:
    """``conv`` with its weight as $g\\, v / \\|v\\|$ per output channel."""
    return nn.utils.parametrizations.weight_norm(conv)


def zero_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    """A same-padded convolution that starts at zero, so its transform starts as the identity."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ResidualBlock(nn.Module):
    r"""$h + \mathrm{conv}_3(\sigma(\mathrm{conv}_3(\sigma(h))))$, weight-normalised.

    Shapes: ``(batch, C, H, W) -> (batch, C, H, W)``.
    """

    def __init__(self, channels: int, activation: str | Callable[[], nn.Module] = "relu") -> None:
        super().__init__()
        first = make_activation(activation)
        if hasattr(first, "inplace"):
            first.inplace = False  # h itself is still needed for the sum
        self.body = nn.Sequential(
            first,
            _weight_normed(nn.Conv2d(channels, channels, 3, padding=1)),
            make_activation(activation),
            _weight_normed(nn.Conv2d(channels, channels, 3, padding=1)),
        )

    def forward(self, h):
        return h + self.body(h)


class ConvResNet(nn.Sequential):
    r"""The convolutional conditioner of the image couplings.

    $$
    y = \mathrm{conv}^{0}_{3\times3}\big(\sigma(\mathrm{conv}_{1\times1}(\sigma(
    R_K \circ \dots \circ R_1(\mathrm{conv}_{3\times3}(x)))))\big)
    $$

    with weight-normalised convolutions, ``blocks`` residual blocks $R_k$
    (`ResidualBlock`) and a last convolution $\mathrm{conv}^0$ that starts at
    zero. ``blocks=0`` is Glow's conditioner (3x3, ReLU, 1x1, ReLU, zero 3x3).

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 64,
        blocks: int = 1,
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        super().__init__(
            _weight_normed(nn.Conv2d(in_channels, channels, 3, padding=1)),
            *(ResidualBlock(channels, activation) for _ in range(blocks)),
            make_activation(activation),
            _weight_normed(nn.Conv2d(channels, channels, 1)),
            make_activation(activation),
            zero_conv(channels, out_channels),
        )
