"""The registry of every transform of the library, for the parametrised suite.

Each case builds a transform for a feature count ``dim`` and says the event shape it acts on
and the context width it needs. A new transform is added here, and `test_every_transform_is
_registered` fails until it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import flowforge.transforms as T
from flowforge.flows import models
from flowforge.nn import TimeMLP


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int], T.Transform]
    min_dim: int = 1
    context_dim: int = 0
    event_shape: Callable[[int], tuple[int, ...]] = lambda dim: (dim,)
    dims: tuple[int, ...] | None = None  # the sizes to test; None: every size >= min_dim
    domain: str = "real"  # "unit": data-side inputs lie in (0, 1) (the Logit preprocessing)
    latent_shape: Callable[[int], tuple[int, ...]] | None = None  # None: the event shape
    # A factor on the suite's parameter perturbation. Whole image models get half: their
    # round-off is eps times a condition number that strong noise on a dozen layers pushes
    # past 1e6, and the tolerances would then test round-off rather than the code.
    damping: float = 1.0
    # float64 tolerances of the round trips and of the log-determinant against autograd's:
    # round-off for closed-form maps; for an ODE's map, its solver's error (see the case)
    round_trip: float = 1e-10
    logdet: float = 1e-8

    def latent_event_shape(self, dim: int) -> tuple[int, ...]:
        return (self.latent_shape or self.event_shape)(dim)

    def __str__(self) -> str:
        return self.name


def _random_mask(dim: int) -> torch.Tensor:
    """A mask with both parts non-empty that is neither a slice nor a half split."""
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[torch.randperm(dim, generator=torch.Generator().manual_seed(dim))[: dim // 2]] = True
    return mask


def _random_permutation(dim: int) -> T.RandomPermutation:
    """A random permutation that is not the identity (which a small dim can draw)."""
    for seed in range(100):
        permutation = T.RandomPermutation(dim, seed=seed)
        if not torch.equal(permutation.permutation, torch.arange(dim)):
            return permutation
    raise AssertionError("unreachable for dim >= 2")


SMALL = (16, 16)
SPLINE = dict(hidden=SMALL, bins=5, tail_bound=2.0)
# Splines get half the perturbation: strong noise makes bins with slopes near 1e-6, where the
# float64 round trip loses eps / slope (a property of the map, not of the code).
SPLINE_DAMPING = 0.5


def _image(channels: int) -> tuple[int, int, int]:
    """A tiny image shape, ``channels`` x 4 x 4 (16 to 48 features: Jacobians stay cheap)."""
    return (channels, 4, 4)


CONV = dict(hidden_channels=8, blocks=1)
IMAGE = dict(event_shape=_image, dims=(1, 3))

CASES = [
    Case("additive-half", lambda d: T.AdditiveCoupling(T.half_mask(d), hidden=SMALL), 2),
    Case("additive-odd-even", lambda d: T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case("affine-half", lambda d: T.AffineCoupling(T.half_mask(d), hidden=SMALL), 2),
    Case(
        "affine-second-half",
        lambda d: T.AffineCoupling(T.half_mask(d, keep_first=False), hidden=SMALL),
        2,
    ),
    Case("affine-odd-even", lambda d: T.AffineCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case("affine-random-mask", lambda d: T.AffineCoupling(_random_mask(d), hidden=SMALL), 2),
    Case(
        "affine-tanh-conditional",
        lambda d: T.AffineCoupling(T.half_mask(d), hidden=SMALL, activation="tanh", context_dim=3),
        2,
        context_dim=3,
    ),
    Case(
        "additive-conditional",
        lambda d: T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL, context_dim=2),
        2,
        context_dim=2,
    ),
    Case("masked-affine", lambda d: T.MaskedAffineCoupling(T.odd_even_mask(d), hidden=SMALL), 2),
    Case(
        "masked-affine-conditional",
        lambda d: T.MaskedAffineCoupling(_random_mask(d), hidden=SMALL, context_dim=2),
        2,
        context_dim=2,
    ),
    Case("diagonal-scaling", T.DiagonalScaling),
    Case("diagonal-scaling-data", lambda d: T.DiagonalScaling(d, target_scale=1.8)),
    Case("diagonal-scaling-gain", lambda d: T.DiagonalScaling(d, target_scale=1.8, gain=10.0)),
    Case("actnorm", T.ActNorm),
    Case("standardize", lambda d: T.Standardize(torch.randn(d), torch.rand(d) + 0.2)),
    Case(
        "standardize-structured",
        lambda d: T.Standardize.from_data(3 * torch.randn(50, d) + 1, structured=True),
    ),
    Case(
        "standardize-image",
        lambda d: T.Standardize(torch.randn(d, 2, 3), torch.rand(d, 1, 1) + 0.2),
        event_shape=lambda d: (d, 2, 3),
    ),
    Case(
        "actnorm-image",
        lambda d: T.ActNorm(d, event_dims=3),
        event_shape=lambda d: (d, 2, 3),
    ),
    Case("squeeze", lambda d: T.Squeeze(), **IMAGE, latent_shape=lambda d: (4 * d, 2, 2)),
    Case(
        "unsqueeze",
        lambda d: T.Squeeze().inv,
        event_shape=lambda d: (4 * d, 2, 2),
        latent_shape=_image,
        dims=(1, 2),
    ),
    Case("invertible-conv1x1", T.InvertibleConv1x1, event_shape=_image, dims=(2, 3)),
    Case("checkerboard-0", lambda d: T.CheckerboardAffineCoupling(d, 0, **CONV), **IMAGE),
    Case("checkerboard-1", lambda d: T.CheckerboardAffineCoupling(d, 1, **CONV), **IMAGE),
    Case("channel-first", lambda d: T.ChannelAffineCoupling(d, True, **CONV), **IMAGE, min_dim=2),
    Case("channel-last", lambda d: T.ChannelAffineCoupling(d, False, **CONV), **IMAGE, min_dim=2),
    Case(
        "channel-bounded-shift",
        lambda d: T.ChannelAffineCoupling(d, shift_bound=0.5, **CONV),
        **IMAGE,
        min_dim=2,
    ),
    Case(
        "checkerboard-bounded-shift",
        lambda d: T.CheckerboardAffineCoupling(d, 1, shift_bound=0.5, **CONV),
        **IMAGE,
    ),
    Case(
        "checkerboard-conditional",
        lambda d: T.CheckerboardAffineCoupling(d, 0, context_dim=2, **CONV),
        **IMAGE,
        context_dim=2,
    ),
    Case(
        "channel-conditional",
        lambda d: T.ChannelAffineCoupling(d, False, context_dim=3, **CONV),
        **IMAGE,
        min_dim=2,
        context_dim=3,
    ),
    Case(
        "factor-out",
        lambda d: T.FactorOut(T.ChannelAffineCoupling(d - 1, **CONV), 1),
        event_shape=_image,
        dims=(3,),
    ),
    Case("logit", lambda d: T.Logit(0.05), domain="unit"),
    Case("logit-image-alpha0", lambda d: T.Logit(0.0), **IMAGE, domain="unit"),
    # The image models after their Logit preprocessing (tested on its own above): strongly
    # perturbed layers push the inverse into the saturated tails of the logistic sigmoid.
    Case(
        "realnvp-image",
        lambda d: models.realnvp_image(
            _image(d), scales=2, blocks=0, channels=8, couplings=1
        ).transform[1],
        **IMAGE,
        damping=0.5,
    ),
    Case(
        "glow",
        lambda d: models.glow(_image(d), levels=2, steps=1, channels=8).transform[1],
        **IMAGE,
        damping=0.5,
    ),
    Case(
        "glow-conditional",
        lambda d: models.glow(_image(d), 2, 1, 8, context_dim=2).transform[1],
        **IMAGE,
        context_dim=2,
        damping=0.5,
    ),
    Case("maf-layer", lambda d: T.AffineAutoregressive(d, hidden=SMALL)),
    Case(
        "maf-layer-random-order-residual",
        lambda d: T.AffineAutoregressive(d, hidden=SMALL, order="random", residual=True, seed=d),
    ),
    Case(
        "maf-layer-conditional",
        lambda d: T.AffineAutoregressive(d, hidden=SMALL, context_dim=3, activation="tanh"),
        context_dim=3,
    ),
    Case("iaf-layer", lambda d: T.AffineAutoregressive(d, hidden=SMALL, order="reverse").inv),
    # Tail bound 2 with inputs of std 1.5: about a fifth of the inputs lie in the tails.
    Case(
        "spline-coupling",
        lambda d: T.SplineCoupling(T.half_mask(d), **SPLINE),
        2,
        damping=SPLINE_DAMPING,
    ),
    Case(
        "spline-coupling-conditional",
        lambda d: T.SplineCoupling(_random_mask(d), context_dim=2, **SPLINE),
        2,
        context_dim=2,
        damping=SPLINE_DAMPING,
    ),
    Case(
        "spline-autoregressive",
        lambda d: T.SplineAutoregressive(d, **SPLINE),
        damping=SPLINE_DAMPING,
    ),
    Case(
        "spline-autoregressive-conditional",
        lambda d: T.SplineAutoregressive(d, order="random", context_dim=2, **SPLINE),
        context_dim=2,
        damping=SPLINE_DAMPING,
    ),
    Case(
        "maf-model-conditional",
        lambda d: models.maf(d, layers=2, hidden=SMALL, context_dim=3, actnorm=True).transform,
        context_dim=3,
    ),
    Case(
        "iaf-model",
        lambda d: models.iaf(d, layers=2, hidden=SMALL, permutation="random").transform,
    ),
    Case(
        "nsf-model-conditional",
        lambda d: (
            models.nsf(d, layers=2, bins=4, tail_bound=2.0, hidden=SMALL, context_dim=2).transform
        ),
        2,
        context_dim=2,
        damping=SPLINE_DAMPING,
    ),
    Case(
        "nsf-autoregressive-model",
        lambda d: models.nsf(d, 2, 4, 2.0, SMALL, autoregressive=True).transform,
        damping=SPLINE_DAMPING,
    ),
    Case("reverse", lambda d: T.ReversePermutation(), 2),
    Case("permutation", lambda d: T.Permutation(torch.arange(d).roll(1)), 2),
    Case("random-permutation", lambda d: _random_permutation(d), 2),
    Case("planar", T.Planar),
    Case("radial", T.Radial),
    Case("inverse-planar", lambda d: T.Inverse(T.Planar(d))),
    Case("inverse-radial", lambda d: T.Radial(d).inv),
    # ODE maps: the error is the solver's. Adaptive at tau = 1e-9 on each sample's norm: a
    # global error of a few tau over a unit of time. Tsit5 in 20 fixed steps of h = 0.05: an
    # error of order h^5 = 3e-7 times the field's derivatives, and the log-determinant
    # integrated by the same scheme differs from the discrete map's by as much.
    Case(
        "cnf",
        lambda d: T.ContinuousFlow(TimeMLP(d, (8, 8)), rtol=1e-9, atol=1e-9),
        dims=(3,),
        round_trip=1e-6,
        logdet=1e-6,
    ),
    Case(
        "cnf-conditional-fixed-steps",
        lambda d: T.ContinuousFlow(TimeMLP(d, (8, 8), context_dim=2), method="tsit5", steps=20),
        context_dim=2,
        dims=(2,),
        round_trip=1e-5,
        logdet=1e-5,
    ),
    Case(
        "compose",
        lambda d: T.Compose(
            T.ActNorm(d),
            T.AffineCoupling(T.half_mask(d), hidden=SMALL),
            T.RandomPermutation(d, seed=1),
            T.AdditiveCoupling(T.odd_even_mask(d), hidden=SMALL),
            T.Planar(d).inv,
            T.DiagonalScaling(d),
        ),
        2,
    ),
]


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initial value by Gaussian noise of std ``scale``,
    and mark data-initialised layers initialised, so no test sees only the identity.

    The triangular factors of an invertible 1x1 convolution get ``scale / sqrt(C)``: random
    triangular matrices with O(1) entries have condition numbers growing like ``2^C``, which
    would test float64 round-off rather than the code."""
    generator = torch.Generator().manual_seed(seed)
    scales = {}
    for m in module.modules():
        if isinstance(m, T.InvertibleConv1x1):
            scales[m.lower] = scales[m.upper] = scale / m.lower.shape[0] ** 0.5
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_(scales.get(p, scale) * noise.to(p.dtype))
        for m in module.modules():
            if isinstance(getattr(m, "initialized", None), torch.Tensor):
                m.initialized.fill_(True)  # ActNorm, DiagonalScaling from data
    return module
