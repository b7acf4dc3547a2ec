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
from .nn import MLP, zero_conv
from .transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineAutoregressive,
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
    RandomPermutation,
    ReversePermutation,
    SplineAutoregressive,
    SplineCoupling,
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


def _inner_context(context_dim: int, embedding_dim: int | None) -> int:
    """The context width the layers see: the embedding's output, or the raw context."""
    _check_int("context_dim", context_dim, 0)
    if embedding_dim is None:
        return context_dim
    _check_int("embedding_dim", embedding_dim, 1)
    if not context_dim:
        raise ValueError("embedding_dim needs a context: set context_dim >= 1")
    return embedding_dim


def _flow(
    transform: Transform,
    base: str,
    event_shape: int | tuple[int, ...],
    context_dim: int,
    embedding_dim: int | None,
) -> Flow:
    """A flow with its base and, for ``embedding_dim``, an MLP embedding of the context
    ``context_dim -> 64 -> embedding_dim``."""
    embedding = None
    if embedding_dim is not None:
        embedding = MLP(context_dim, embedding_dim, (64,))
        embedding[-1].reset_parameters()  # an embedding that starts at zero would learn late
    inner = _inner_context(context_dim, embedding_dim)
    return Flow(transform, make_base(base, event_shape, inner), embedding)


def _autoregressive_layers(
    dim: int,
    layers: int,
    permutation: str,
    seed: int,
    actnorm: bool,
    made: dict[str, Any],
    scale_bound: float,
) -> list[Transform]:
    """``layers`` :class:`AffineAutoregressive` layers on MADEs with options ``made``, a
    permutation between consecutive ones and, with ``actnorm``, an ActNorm before each."""
    steps: list[Transform] = []
    for i in range(layers):
        if i:
            steps.append(_permutation(permutation, dim, seed + i))
        if actnorm:
            steps.append(ActNorm(dim))
        steps.append(AffineAutoregressive(dim, scale_bound=scale_bound, **made))
    return steps


def _permutation(kind: str, dim: int, seed: int) -> Transform:
    if kind == "reverse":
        return ReversePermutation()
    if kind == "random":
        return RandomPermutation(dim, seed=seed)
    raise ValueError(f"unknown permutation {kind!r}; expected reverse or random")


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
    embedding_dim: int | None = None,
) -> Flow:
    r"""Real NVP (Dinh et al. 2016) on vectors: ``layers`` affine couplings.

    Consecutive layers keep complementary parts (``mask="half"``: first half, then second
    half; ``"odd-even"``: even, then odd indices), so every feature is transformed. Each
    conditioner is an MLP with the given ``hidden`` widths; see :class:`AffineCoupling` for the
    bounded scale. ``actnorm=True`` puts an :class:`ActNorm` before every coupling (the
    data-initialised counterpart of the paper's batch normalisation): recommended for data
    whose features have very different scales, such as images. Shapes ``(batch, dim)``.
    See :func:`maf` for ``context_dim``, ``embedding_dim`` and the ``"conditional-normal"``
    base.
    """
    _check_int("dim", dim, 2)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
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
                context_dim=inner,
            )
        )
    return _flow(Compose(*steps), base, dim, context_dim, embedding_dim)


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
    embedding_dim: int | None = None,
) -> Flow:
    r"""NICE (Dinh et al. 2014): ``layers`` additive couplings, then a diagonal scaling.

    .. math:: z = e^{s} \odot (g_L \circ \dots \circ g_1)(x), \qquad
              \log p(x) = \log p_z(z) + \textstyle\sum_i s_i

    As in the paper's MNIST model: partitions alternate between odd and even indices,
    conditioners are ReLU MLPs (5 x 1000 by default) and the base is the standard logistic.
    ``actnorm=True`` (not in the paper) standardises the input with one data-initialised
    :class:`ActNorm`, so that features of very different scales need not be rescaled by
    the slow gradient steps of ``s``. Shapes ``(batch, dim)``. See :func:`maf` for
    ``context_dim`` and ``embedding_dim``.
    """
    _check_int("dim", dim, 2)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    couplings = [
        AdditiveCoupling(m, hidden=hidden, activation=activation, context_dim=inner)
        for m in _alternating_masks(mask, dim, layers)
    ]
    first = [ActNorm(dim)] if actnorm else []
    transform = Compose(*first, *couplings, DiagonalScaling(dim))
    return _flow(transform, base, dim, context_dim, embedding_dim)


@_builder
def maf(
    dim: int,
    layers: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    residual: bool = False,
    permutation: str = "reverse",
    actnorm: bool = False,
    activation: str = "relu",
    scale_bound: float = 3.0,
    base: str = "normal",
    context_dim: int = 0,
    embedding_dim: int | None = None,
    seed: int = 0,
) -> Flow:
    r"""Masked autoregressive flow (Papamakarios et al. 2017): ``layers`` MAF layers.

    Each layer is :class:`AffineAutoregressive`, :math:`z_i = x_i e^{s_i(x_{<i})} +
    t_i(x_{<i})`, on a :class:`~flowforge.made.MADE` with the given ``hidden`` widths
    (``residual=True``: residual connections). A ``permutation`` (``"reverse"``, as in the
    paper, or ``"random"``, seeded by ``seed``) between layers changes the ordering; with
    ``actnorm=True`` an :class:`ActNorm` precedes each layer (the data-initialised stand-in
    for the paper's batch normalisation). ``log_prob`` is one pass per layer; ``sample`` takes
    ``dim`` small steps per layer that compute each hidden unit once
    (:meth:`~flowforge.made.MADE.autoregress`: about one pass of arithmetic).

    Conditional: ``context_dim > 0`` feeds a context ``(batch, context_dim)`` to every layer;
    ``embedding_dim`` first maps it by an MLP ``context_dim -> 64 -> embedding_dim`` trained
    with the flow; ``base="conditional-normal"`` makes the base a diagonal Gaussian whose
    mean and scale an MLP computes from the (embedded) context. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    made = dict(hidden=hidden, residual=residual, activation=activation, context_dim=inner)
    steps = _autoregressive_layers(dim, layers, permutation, seed, actnorm, made, scale_bound)
    return _flow(Compose(*steps), base, dim, context_dim, embedding_dim)


@_builder
def iaf(
    dim: int,
    layers: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    residual: bool = False,
    permutation: str = "reverse",
    activation: str = "relu",
    scale_bound: float = 3.0,
    base: str = "normal",
    context_dim: int = 0,
    embedding_dim: int | None = None,
    seed: int = 0,
) -> Flow:
    r"""Inverse autoregressive flow (Kingma et al. 2016): ``layers`` IAF layers, base to data.

    Each layer, in the generative direction, is :math:`x_i = z_i e^{s_i(z_{<i})} +
    t_i(z_{<i})`: the one-pass forward of an :class:`AffineAutoregressive` applied to the
    latent side (the flow's data -> latent transform holds their inverses), so
    ``sample_and_log_prob`` is one MADE pass per layer, the trade-off that variational
    inference wants, and ``log_prob`` of given data takes ``dim`` passes per layer
    (without gradients, ``dim`` small steps that compute each hidden unit once). Options as
    in :func:`maf` (no ActNorm: its data initialisation needs data, which VI does not have).
    ``base="diag-normal"`` gives a learnable Gaussian base. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    made = dict(hidden=hidden, residual=residual, activation=activation, context_dim=inner)
    generative = _autoregressive_layers(dim, layers, permutation, seed, False, made, scale_bound)
    # Each layer's one-pass forward runs from the latent towards the data.
    return _flow(_generative(generative), base, dim, context_dim, embedding_dim)


@_builder
def nsf(
    dim: int,
    layers: int = 4,
    bins: int = 8,
    tail_bound: float = 5.0,
    hidden: Sequence[int] = (64, 64),
    autoregressive: bool = False,
    *,
    mask: str = "half",
    actnorm: bool = False,
    activation: str = "relu",
    base: str = "normal",
    context_dim: int = 0,
    embedding_dim: int | None = None,
) -> Flow:
    r"""Neural spline flow (Durkan et al. 2019): ``layers`` rational-quadratic spline layers.

    Coupling form (default): :class:`SplineCoupling` layers whose kept parts alternate as in
    :func:`realnvp` (``mask``); one pass in either direction. ``autoregressive=True``:
    :class:`SplineAutoregressive` layers on MADEs with the ordering reversed between layers
    (density in one pass, sampling in ``dim``). Each feature gets a monotonic spline of
    ``bins`` bins on ``[-tail_bound, tail_bound]`` and the identity outside it, so the data
    should mostly lie inside (standardise it, or use ``actnorm=True``, which puts a
    data-initialised :class:`ActNorm` before every layer). Conditional options as in
    :func:`maf`. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1 if autoregressive else 2)
    _check_int("layers", layers, 1)
    _check_int("bins", bins, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    spline = dict(
        bins=bins, tail_bound=tail_bound, hidden=hidden, activation=activation, context_dim=inner
    )
    steps: list[Transform] = []
    masks = None if autoregressive else _alternating_masks(mask, dim, layers)
    for i in range(layers):
        if actnorm:
            steps.append(ActNorm(dim))
        if autoregressive:
            steps += [ReversePermutation()] if i else []
            steps.append(SplineAutoregressive(dim, **spline))
        else:
            steps.append(SplineCoupling(masks[i], **spline))
    return _flow(Compose(*steps), base, dim, context_dim, embedding_dim)


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
    context_dim: int = 0,
    embedding_dim: int | None = None,
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
    :class:`ChannelAffineCoupling`). ``context_dim`` and ``embedding_dim`` make it
    conditional, e.g. on a one-hot class label (see :func:`maf`; the couplings see the
    context as constant input channels).
    """
    _check_int("scales", scales, 1)
    _check_int("blocks", blocks, 0)
    _check_int("channels", channels, 1)
    _check_int("couplings", couplings, 1)
    c, _, _ = _check_image_shape(shape, scales - 1, f"{scales} scales")
    net = dict(
        hidden_channels=channels,
        blocks=blocks,
        scale_bound=scale_bound,
        shift_bound=shift_bound,
        context_dim=_inner_context(context_dim, embedding_dim),
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

    transform = Compose(Logit(alpha), scale(c, 0))
    return _flow(transform, base, tuple(shape), context_dim, embedding_dim)


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
    context_dim: int = 0,
    embedding_dim: int | None = None,
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
    ``context_dim`` and ``embedding_dim`` make it conditional (see :func:`realnvp_image`; the
    learned prior sees the context too).
    """
    _check_int("levels", levels, 1)
    _check_int("steps", steps, 1)
    _check_int("channels", channels, 1)
    _check_int("blocks", blocks, 0)
    c, _, _ = _check_image_shape(shape, levels, f"{levels} levels")
    inner = _inner_context(context_dim, embedding_dim)
    net = dict(
        hidden_channels=channels,
        blocks=blocks,
        scale_bound=scale_bound,
        shift_bound=shift_bound,
        context_dim=inner,
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
                prior = zero_conv(width - half + inner, 2 * half)
                layers.append(
                    ChannelAffineCoupling(
                        width, keep_first=False, conditioner=prior, context_dim=inner
                    )
                )
            layers.append(FactorOut(level(width - half, index + 1), half))
        layers.append(Squeeze().inv)
        return Compose(*layers)

    return _flow(Compose(Logit(alpha), level(c, 0)), base, tuple(shape), context_dim, embedding_dim)
