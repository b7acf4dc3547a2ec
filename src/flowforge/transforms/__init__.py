"""Invertible transforms. ``forward`` maps data to latent, ``inverse`` latent to data; both
return ``(output, log|det J|)`` with the log-determinant of shape ``(batch,)``."""

from flowforge.transforms.autoregressive import AffineAutoregressive, Autoregressive
from flowforge.transforms.base import Compose, Inverse, Transform, steps
from flowforge.transforms.continuous import ContinuousFlow, solver
from flowforge.transforms.conv import InvertibleConv1x1
from flowforge.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    MaskedAffineCoupling,
)
from flowforge.transforms.elementwise import ActNorm, DiagonalScaling, Standardize
from flowforge.transforms.image_coupling import (
    ChannelAffineCoupling,
    CheckerboardAffineCoupling,
    checkerboard,
)
from flowforge.transforms.multiscale import FactorOut
from flowforge.transforms.partition import Partition, half_mask, odd_even_mask
from flowforge.transforms.permutation import Permutation, RandomPermutation, ReversePermutation
from flowforge.transforms.planar import Planar
from flowforge.transforms.preprocessing import Logit
from flowforge.transforms.radial import Radial
from flowforge.transforms.spline import SplineAutoregressive, SplineCoupling, rational_quadratic
from flowforge.transforms.squeeze import Squeeze
from flowforge.transforms.torch_adapter import TorchTransform

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineAutoregressive",
    "AffineCoupling",
    "Autoregressive",
    "ChannelAffineCoupling",
    "CheckerboardAffineCoupling",
    "Compose",
    "ContinuousFlow",
    "Coupling",
    "DiagonalScaling",
    "FactorOut",
    "Inverse",
    "InvertibleConv1x1",
    "Logit",
    "MaskedAffineCoupling",
    "Partition",
    "Permutation",
    "Planar",
    "Radial",
    "RandomPermutation",
    "ReversePermutation",
    "SplineAutoregressive",
    "SplineCoupling",
    "Squeeze",
    "Standardize",
    "TorchTransform",
    "Transform",
    "checkerboard",
    "half_mask",
    "odd_even_mask",
    "rational_quadratic",
    "solver",
    "steps",
]
