"""Model builders: one function per architecture, each returning a :class:`~flowforge.Flow`.

Every builder records its arguments in ``flow.config`` (plain JSON-able values), from which
:func:`build` makes the same architecture again.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .distributions import make_base
from .flow import Flow
from .nn import zero_conv
from .transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelAffineCoupling,
    CheckerboardAffineCoupling,
    Compose,
    DiagonalScaling,
    FactorOut,
    Inverse,
    InvertibleConv1x1,
    Logit,
    Planar,
    Radial,
    Squeeze,
    Transform,
    half_mask,
    odd_even_mask,
)

MODELS: dict[str, Callable[..., Flow]] = {}

MASKS = {"half": half_mask, "odd-even": odd_even_mask}


def _builder(function: Callable[..., Flow]) -> Callable[..., Flow]:
    """Register a builder in :data:`MODELS` and record its bound arguments in ``flow.config``."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def build_and_record(*args: Any, **kwargs: Any) -> Flow:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        flow = function(*bound.args, **bound.kwargs)
        arguments = {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}
        flow.config = {"model": function.__name__, **arguments}
        return flow

    MODELS[function.__name__] = build_and_record
    return build_and_record


def build(config: dict[str, Any]) -> Flow:
    """Rebuild a model from a ``flow.config`` dictionary (fresh parameters)."""
    config = dict(config)
    name = config.pop("model", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](**config)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(hidden)
    if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
    return hidden


def _alternating_masks(kind: str, dim: int, layers: int) -> list:
    if kind not in MASKS:
        raise ValueError(f"unknown mask {kind!r}; expected one of {sorted(MASKS)}")
    return [MASKS[kind](dim, i % 2 == 0) for i in range(layers)]


@_builder
def realnvp(
    dim: int,
    layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    *,
    mask: str = "half",
    activation: str = "relu",
    scale_bound: float = 3.0,
    base: str = "normal",
    actnorm: bool = False,
    context_dim: int = 0,
) -> Flow:
    r"""Real NVP (Dinh et al. 2016) on vectors: ``layers`` affine couplings.

    Consecutive layers keep complementary parts (``mask="half"``: first half, then second
    half; ``"odd-even"``: even, then odd indices), so every feature is transformed. Each
    conditioner is an MLP with the given ``hidden`` widths; see :class:`AffineCoupling` for the
    bounded scale. ``actnorm=True`` puts an :class:`ActNorm` before every coupling (the
    data-initialised counterpart of the paper's batch normalisation): recommended for data
    whose features have very different scales, such as images. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 2)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    steps = []
    for m in _alternating_masks(mask, dim, layers):
        if actnorm:
            steps.append(ActNorm(dim))
        steps.append(
            AffineCoupling(
                m,
                hidden=hidden,
                activation=activation,
                scale_bound=scale_bound,
                context_dim=context_dim,
            )
        )
    return Flow(Compose(*steps), make_base(base, dim))


@_builder
def nice(
    dim: int,
    layers: int = 4,
    hidden: Sequence[int] = (1000,) * 5,
    *,
    mask: str = "odd-even",
    activation: str = "relu",
    base: str = "logistic",
    actnorm: bool = False,
    context_dim: int = 0,
) -> Flow:
    r"""NICE (Dinh et al. 2014): ``layers`` additive couplings, then a diagonal scaling.

    .. math:: z = e^{s} \odot (g_L \circ \dots \circ g_1)(x), \qquad
              \log p(x) = \log p_z(z) + \textstyle\sum_i s_i

    As in the paper's MNIST model: partitions alternate between odd and even indices,
    conditioners are ReLU MLPs (5 x 1000 by default) and the base is the standard logistic.
    ``actnorm=True`` (not in the paper) standardises the input with one data-initialised
    :class:`ActNorm`, so that features of very different scales need not be rescaled by
    the slow gradient steps of ``s``. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 2)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    couplings = [
        AdditiveCoupling(m, hidden=hidden, activation=activation, context_dim=context_dim)
        for m in _alternating_masks(mask, dim, layers)
    ]
    first = [ActNorm(dim)] if actnorm else []
    return Flow(Compose(*first, *couplings, DiagonalScaling(dim)), make_base(base, dim))


def _generative(layers: list[nn.Module]) -> Inverse:
    """The data -> latent transform of a flow whose layers are defined from latent to data."""
    return Inverse(Compose(*layers))


@_builder
def planar(dim: int, layers: int = 8, *, base: str = "normal") -> Flow:
    r"""Planar flow (Rezende & Mohamed 2015): ``layers`` planar maps from the base to the data.

    :math:`x = f_K \circ \dots \circ f_1(z_0)`.
    The layers are defined in the generative direction (see :class:`Planar`); ``log_prob(x)``
    inverts them exactly. ``base="diag-normal"`` gives the learnable Gaussian used for
    variational inference. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    _check_int("layers", layers, 1)
    return Flow(_generative([Planar(dim) for _ in range(layers)]), make_base(base, dim))


@_builder
def radial(dim: int, layers: int = 8, *, base: str = "normal") -> Flow:
    r"""Radial flow (Rezende & Mohamed 2015): ``layers`` radial maps from the base to the data.

    :math:`x = f_K \circ \dots \circ f_1(z_0)`.
    The layers are defined in the generative direction (see :class:`Radial`); ``log_prob(x)``
    inverts them in closed form. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    _check_int("layers", layers, 1)
    return Flow(_generative([Radial(dim) for _ in range(layers)]), make_base(base, dim))


# ---------------------------------------------------------------------------- images


def _check_image_shape(shape: Sequence[int], squeezes: int, what: str) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)``, with ``H`` and ``W`` divisible by ``2**squeezes``."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"shape must be (channels, height, width) of positive integers, got {shape}"
        )
    factor = 2**squeezes
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"{what} squeeze the image {squeezes} times, so height and width must be divisible "
            f"by {factor}; got {shape[1]}x{shape[2]} (use fewer, or pad the images)"
        )
    return shape


@_builder
def realnvp_image(
    shape: Sequence[int],
    scales: int = 3,
    blocks: int = 2,
    channels: int = 64,
    *,
    couplings: int = 3,
    alpha: float = 0.05,
    scale_bound: float = 3.0,
    shift_bound: float | None = None,
    actnorm: bool = True,
    base: str = "normal",
) -> Flow:
    r"""Multi-scale Real NVP (Dinh et al. 2016) on images ``(batch, C, H, W)`` in ``[0, 1]``.

    After the :class:`Logit` preprocessing, each scale but the last applies ``couplings``
    checkerboard couplings (alternating colours), a :class:`Squeeze`, ``couplings``
    channel-wise couplings (alternating halves), then factors out half of the channels
    (:class:`FactorOut`) and hands the rest to the next scale; the last scale applies
    ``couplings + 1`` checkerboard couplings. Conditioners are :class:`ConvResNet` with
    ``blocks`` residual blocks of ``channels`` channels. ``actnorm=True`` puts an
    :class:`ActNorm` after every coupling (the data-initialised stand-in for the paper's
    batch normalisation, which would make samples of a batch depend on each other). The latent
    keeps the data's shape; the standard-normal ``base`` factorises over the scales' parts.
    ``scale_bound`` and ``shift_bound`` bound each coupling (see
    :class:`ChannelAffineCoupling`).
    """
    _check_int("scales", scales, 1)
    _check_int("blocks", blocks, 0)
    _check_int("channels", channels, 1)
    _check_int("couplings", couplings, 1)
    c, _, _ = _check_image_shape(shape, scales - 1, f"{scales} scales")
    net = dict(
        hidden_channels=channels, blocks=blocks, scale_bound=scale_bound, shift_bound=shift_bound
    )

    def normalised(coupling: Transform, width: int) -> list[Transform]:
        return [coupling, ActNorm(width, event_dims=3)] if actnorm else [coupling]

    def scale(width: int, index: int) -> Transform:
        last = index == scales - 1
        layers = []
        for i in range(couplings + 1 if last else couplings):
            layers += normalised(CheckerboardAffineCoupling(width, parity=i % 2, **net), width)
        if last:
            return Compose(*layers)
        layers.append(Squeeze())
        for i in range(couplings):
            layers += normalised(ChannelAffineCoupling(4 * width, i % 2 == 0, **net), 4 * width)
        layers += [FactorOut(scale(2 * width, index + 1), 2 * width), Squeeze().inv]
        return Compose(*layers)

    return Flow(Compose(Logit(alpha), scale(c, 0)), make_base(base, tuple(shape)))


@_builder
def glow(
    shape: Sequence[int],
    levels: int = 3,
    steps: int = 32,
    channels: int = 512,
    *,
    blocks: int = 0,
    alpha: float = 0.05,
    scale_bound: float = 3.0,
    shift_bound: float | None = None,
    learn_prior: bool = True,
    base: str = "normal",
) -> Flow:
    r"""Glow (Kingma & Dhariwal 2018) on images ``(batch, C, H, W)`` in ``[0, 1]``.

    After the :class:`Logit` preprocessing, each level applies a :class:`Squeeze` and
    ``steps`` steps of flow, each an :class:`ActNorm` (data-initialised), an
    :class:`InvertibleConv1x1` (LU form) and a :class:`ChannelAffineCoupling` whose
    conditioner is 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3 conv with ``channels`` channels
    (``blocks`` > 0 adds residual blocks). Every level but the last then factors out half of
    the channels. With ``learn_prior`` the factored half gets Glow's learned prior, a Gaussian
    whose mean and scale a zero-initialised convolution computes from the other half,
    written as the affine map :math:`\epsilon = (z_1 - \mu(z_2)) e^{-\log\sigma(z_2)}` into
    the standard-normal base (so temperature scales it too). Defaults are the paper's
    (L = 3, K = 32, 512 channels); the image must be divisible by ``2**levels``.
    ``scale_bound`` and ``shift_bound`` bound each coupling (see :class:`ChannelAffineCoupling`).
    """
    _check_int("levels", levels, 1)
    _check_int("steps", steps, 1)
    _check_int("channels", channels, 1)
    _check_int("blocks", blocks, 0)
    c, _, _ = _check_image_shape(shape, levels, f"{levels} levels")
    net = dict(
        hidden_channels=channels, blocks=blocks, scale_bound=scale_bound, shift_bound=shift_bound
    )

    def level(width: int, index: int) -> Transform:
        width *= 4
        layers: list[Transform] = [Squeeze()]
        for _ in range(steps):
            layers += [
                ActNorm(width, event_dims=3),
                InvertibleConv1x1(width),
                ChannelAffineCoupling(width, **net),
            ]
        if index < levels - 1:
            half = width // 2
            if learn_prior:
                prior = zero_conv(width - half, 2 * half)
                layers.append(ChannelAffineCoupling(width, keep_first=False, conditioner=prior))
            layers.append(FactorOut(level(width - half, index + 1), half))
        layers.append(Squeeze().inv)
        return Compose(*layers)

    return Flow(Compose(Logit(alpha), level(c, 0)), make_base(base, tuple(shape)))
