"""Invertible transforms. ``forward`` maps data to latent, ``inverse`` latent to data; both
return ``(output, log|det J|)`` with the log-determinant of shape ``(batch,)``."""

from .autoregressive import AffineAutoregressive, Autoregressive
from .base import Compose, Inverse, Transform, steps
from .conv import InvertibleConv1x1
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, MaskedAffineCoupling
from .elementwise import ActNorm, DiagonalScaling
from .image_coupling import ChannelAffineCoupling, CheckerboardAffineCoupling, checkerboard
from .multiscale import FactorOut
from .partition import Partition, half_mask, odd_even_mask
from .permutation import Permutation, RandomPermutation, ReversePermutation
from .planar import Planar
from .preprocessing import Logit
from .radial import Radial
from .spline import SplineAutoregressive, SplineCoupling, rational_quadratic
from .squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineAutoregressive",
    "AffineCoupling",
    "Autoregressive",
    "ChannelAffineCoupling",
    "CheckerboardAffineCoupling",
    "Compose",
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
    "Transform",
    "checkerboard",
    "half_mask",
    "odd_even_mask",
    "rational_quadratic",
    "steps",
]
