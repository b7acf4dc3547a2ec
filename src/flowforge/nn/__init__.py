"""The networks that parametrise a transform: MLPs, residual convolutional nets, MADE, and
the vector fields of continuous flows."""

from flowforge.nn.mlp import ACTIVATIONS, MLP, ConvResNet, ResidualBlock, make_activation, zero_conv
from flowforge.nn.velocity import TimeMLP

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ConvResNet",
    "ResidualBlock",
    "TimeMLP",
    "make_activation",
    "zero_conv",
]
