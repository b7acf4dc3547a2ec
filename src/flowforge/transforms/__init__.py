"""Invertible transforms. ``forward`` maps data to latent, ``inverse`` latent to data; both
return ``(output, log|det J|)`` with the log-determinant of shape ``(batch,)``."""

from .base import Compose, Inverse, Transform, steps
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, MaskedAffineCoupling
from .elementwise import ActNorm, DiagonalScaling
from .partition import Partition, half_mask, odd_even_mask
from .permutation import Permutation, RandomPermutation, ReversePermutation
from .planar import Planar
from .radial import Radial

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Compose",
    "Coupling",
    "DiagonalScaling",
    "Inverse",
    "MaskedAffineCoupling",
    "Partition",
    "Permutation",
    "Planar",
    "Radial",
    "RandomPermutation",
    "ReversePermutation",
    "Transform",
    "half_mask",
    "odd_even_mask",
    "steps",
]
