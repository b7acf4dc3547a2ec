"""The networks that parametrise a transform: MLPs, residual convolutional nets and MADE."""

from flowforge.nn.mlp import ACTIVATIONS, MLP, ConvResNet, ResidualBlock, make_activation, zero_conv

__all__ = ["ACTIVATIONS", "MLP", "ConvResNet", "ResidualBlock", "make_activation", "zero_conv"]
