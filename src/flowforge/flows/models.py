"""Model builders: one function per architecture, each returning a `Flow`.

Every builder records its arguments in ``flow.config`` (plain JSON-able values), from which
`build()` makes the same architecture again.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from flowforge.flows.distributions import make_base
from flowforge.flows.flow import Flow
from flowforge.nn.mlp import MLP, zero_conv
from flowforge.nn.velocity import TimeMLP
from flowforge.runtime import limits
from flowforge.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineAutoregressive,
    AffineCoupling,
    ChannelAffineCoupling,
    CheckerboardAffineCoupling,
    Compose,
    ContinuousFlow,
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
    """Register a builder in `MODELS` and record its bound arguments in ``flow.config``."""
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


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a ``flow.config``) with its builder's default for every argument it lacks,
    as a model saved before that argument existed was built; a config of no builder as it
    is."""
    builder = MODELS.get(config.get("model")) if isinstance(config.get("model"), str) else None
    if builder is None:
        return dict(config)
    defaults = {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in inspect.signature(builder).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **config}


def build(config: Mapping[str, Any], *, max_parameters: int | None = None) -> Flow:
    """Rebuild a model from a ``flow.config`` dictionary (fresh parameters), refusing one
    that is too large before allocating it.

    ``config`` is ``{"model": name, **arguments}``. Refused, each with one line: a name not in
    `MODELS` (``ValueError``), arguments the builder does not take or of the wrong type
    (its own ``TypeError`` / ``ValueError``), counts or widths above
    `STRUCTURE_LIMITS`, and a model of more parameters and buffers than
    ``max_parameters`` (default: ``FLOWFORGE_MAX_PARAMETERS``, see `flowforge.runtime.limits`)
    (`BudgetError`). See `check_budget()`.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"a model config must be a mapping, got {type(config).__name__}")
    config = dict(config)
    name = config.pop("model", None)
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    bad = next((key for key in config if not isinstance(key, str)), None)
    if bad is not None:
        raise TypeError(f"model {name!r}: argument names must be strings, got {bad!r}")
    check_budget(name, config, max_parameters)
    return _call_builder(name, config)


# Bounds on the counts and widths in a description, checked before anything is built so that
# a hostile model.json or config file cannot make Python objects (layers, masks) without end.
# They are generous for real models: NICE on MNIST is dim 784 with 4 layers of 5 x 1000, and
# Glow 3 levels of 32 steps of 512 channels (96 repeated steps). Raise an entry here if a
# model needs more.
STRUCTURE_LIMITS: dict[str, int] = {
    "dim": 2**21,  # features of a vector model
    "context_dim": 2**20,
    "embedding_dim": 2**20,
    "layers": 2048,
    "steps": 2048,
    "levels": 16,
    "scales": 16,
    "couplings": 256,
    "blocks": 256,
    "bins": 4096,
    "channels": 2**16,
    "width": 2**16,  # each entry of hidden, and each side of an image shape
    "depth": 256,  # entries of hidden
    "pixels": 2**26,  # the product of an image shape
    # The product of layers, steps, levels, scales, couplings, blocks + 1 and entries of
    # hidden + 1: the number of repeated modules (papers use at most a few hundred; checking
    # 2048 convolutional ones takes about 10 s on a slow CPU).
    "repeats": 2048,
}
_REPEATED = ("layers", "steps", "levels", "scales", "couplings", "blocks")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_structure(name: str, arguments: Mapping[str, Any]) -> None:
    """Refuse integer arguments above `STRUCTURE_LIMITS` (others are left to the
    builder's own checks)."""

    def refuse(what: str, value: int, key: str) -> None:
        raise limits.BudgetError(
            f"model {name!r}: {what} {value:,} is above the limit of {STRUCTURE_LIMITS[key]:,} "
            f"(ff.models.STRUCTURE_LIMITS[{key!r}]; raise it there if this is intended)"
        )

    for key, value in arguments.items():
        if key in STRUCTURE_LIMITS and _is_int(value) and value > STRUCTURE_LIMITS[key]:
            refuse(key, value, key)
    hidden = arguments.get("hidden")
    if isinstance(hidden, list | tuple):
        if len(hidden) > STRUCTURE_LIMITS["depth"]:
            refuse("the number of hidden layers", len(hidden), "depth")
        for width in hidden:
            if _is_int(width) and width > STRUCTURE_LIMITS["width"]:
                refuse("hidden width", width, "width")
    shape = arguments.get("shape")
    if isinstance(shape, list | tuple) and all(_is_int(side) for side in shape):
        if len(shape) > 8:
            raise ValueError(f"model {name!r}: shape must be (channels, height, width)")
        for side in shape:
            if side > STRUCTURE_LIMITS["width"]:
                refuse("image side", side, "width")
        if math.prod(shape) > STRUCTURE_LIMITS["pixels"]:
            refuse("an image of size", math.prod(shape), "pixels")
    repeats = [
        arguments[key] + (key == "blocks")
        for key in _REPEATED
        if _is_int(arguments.get(key)) and arguments[key] > 0
    ]
    if isinstance(hidden, list | tuple):
        repeats.append(len(hidden) + 1)
    if math.prod(repeats) > STRUCTURE_LIMITS["repeats"]:
        refuse("a product of repeated parts of", math.prod(repeats), "repeats")


def count_parameters(name: str, arguments: Mapping[str, Any]) -> int:
    """The parameters and buffers of ``MODELS[name](**arguments)``, counted exactly without
    allocating them: the model is built under `_SizeProbe`, which keeps floating-point
    and large tensors on the ``meta`` device (shapes without storage). The global random state
    is left as it was. Arguments are checked against `STRUCTURE_LIMITS` first."""
    _check_structure(name, arguments)
    with torch.random.fork_rng(devices=[]), _SizeProbe():
        flow = _call_builder(name, dict(arguments))
    tensors = {id(t): t for t in (*flow.parameters(), *flow.buffers())}
    return sum(t.numel() for t in tensors.values())


def check_budget(name: str, arguments: Mapping[str, Any], max_parameters: int | None = None) -> int:
    """Refuse (`BudgetError`, one line naming the limit and how to
    raise it) to build ``MODELS[name](**arguments)`` if it would have more than
    ``max_parameters`` parameters and buffers (default: ``FLOWFORGE_MAX_PARAMETERS``) or
    break `STRUCTURE_LIMITS`; return its count (see `count_parameters()`)."""
    count = count_parameters(name, arguments)
    limits.check_parameters(count, f"model {name!r}", max_parameters)
    return count


def _call_builder(name: str, arguments: dict[str, Any]) -> Flow:
    """``MODELS[name](**arguments)``; what torch raises on arguments it cannot use (a seed too
    large for a generator, say) becomes a one-line ``ValueError`` naming the model."""
    try:
        return MODELS[name](**arguments)
    except (ValueError, TypeError):
        raise
    except (RuntimeError, ArithmeticError, LookupError, AttributeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"model {name!r} cannot be built from {arguments}: {reason}") from None


_CONSTRUCTORS = {
    torch.arange,
    torch.empty,
    torch.empty_strided,
    torch.eye,
    torch.full,
    torch.linspace,
    torch.logspace,
    torch.ones,
    torch.rand,
    torch.randint,
    torch.randn,
    torch.randperm,
    torch.tensor,
    torch.as_tensor,
    torch.asarray,
    torch.tril_indices,
    torch.triu_indices,
    torch.zeros,
}
_SMALL = 2**16  # elements: the results of operations up to this size are computed for real
_REAL_FLOATS = 2**22  # floating-point numbers computed for real in all, then meta only


def _to_meta(tree: Any, found: list[torch.Tensor]) -> Any:
    """``tree`` (arguments: nested lists, tuples, dicts) with its tensors on the meta device
    and its generators dropped (a CPU generator cannot draw meta tensors); the tensors met
    are appended to ``found``."""
    if isinstance(tree, torch.Tensor):
        found.append(tree)
        return tree if tree.is_meta else tree.to("meta")
    kind = type(tree)
    if kind is torch.Generator:
        return None
    if kind is list or kind is tuple:
        return kind(_to_meta(item, found) for item in tree)
    if kind is dict:
        return {key: _to_meta(value, found) for key, value in tree.items()}
    return tree


def _scale(tree: Any) -> int:
    """The product of the integers (each at least 1) in ``tree``: with the sizes of the input
    tensors, a bound on the size of what an operation such as ``repeat`` or broadcasting can
    make of them."""
    if isinstance(tree, int) and not isinstance(tree, bool):
        return max(1, abs(tree))
    if isinstance(tree, float):
        return max(1, math.ceil(abs(tree))) if math.isfinite(tree) else _SMALL + 1
    if type(tree) in (list, tuple, torch.Size):
        return math.prod(_scale(item) for item in tree)
    if type(tree) is dict:
        return math.prod(_scale(value) for value in tree.values())
    return 1


def _floats_to_meta(value: Any) -> Any:
    """``value`` (an operation's result) with its floating-point tensors moved to meta."""
    if isinstance(value, torch.Tensor):
        return value.to("meta") if value.is_floating_point() else value
    if type(value) in (list, tuple):
        return type(value)(_floats_to_meta(item) for item in value)
    return value


def _results(value: Any) -> list[torch.Tensor]:
    """The tensors that an operation returned."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


class _SizeProbe(TorchFunctionMode):
    """Build a model with no storage for its large tensors: every result of more than
    ``_SMALL`` elements goes to the ``meta`` device (shapes without storage), and so does
    every floating-point one once ``_REAL_FLOATS`` numbers have been computed; what
    construction code inspects (masks, permutations, degrees: ``tolist``, ``nonzero``) stays
    real. An operation on real tensors runs for real if its inputs are too small for its
    result to be large (the product of their sizes and of the integers passed bounds it);
    otherwise it is first tried on meta copies to learn the kind and size of its result. (Small
    models are so built without torch's meta kernels written in Python, whose first use
    imports ``torch._dynamo``, over a second.)"""

    def __init__(self) -> None:
        super().__init__()
        self.real_floats = 0

    def _kept(self, value: Any) -> Any:
        """A small result of a real computation: kept real unless the floating-point numbers
        so computed exceed ``_REAL_FLOATS``."""
        self.real_floats += sum(t.numel() for t in _results(value) if t.is_floating_point())
        return value if self.real_floats <= _REAL_FLOATS else _floats_to_meta(value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__":  # an attribute such as .shape
            return func(*args, **kwargs)
        tensors: list[torch.Tensor] = []
        meta_args, meta_kwargs = _to_meta((args, kwargs), tensors)
        constructor = func in _CONSTRUCTORS
        if not tensors and not constructor:
            return func(*args, **kwargs)
        if any(t.is_meta for t in tensors):
            return func(*meta_args, **meta_kwargs)
        if math.prod(t.numel() for t in tensors) * _scale((args, kwargs)) <= _SMALL:
            return self._kept(func(*args, **kwargs))
        if constructor:
            meta_kwargs["device"] = "meta"
        try:
            probe = func(*meta_args, **meta_kwargs)
        except Exception:  # needs the values (nonzero, equal, tolist): the inputs are small
            return func(*args, **kwargs)
        if any(t.is_floating_point() or t.numel() > _SMALL for t in _results(probe)):
            return probe
        return func(*args, **kwargs)


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
    """``layers`` `AffineAutoregressive` layers on MADEs with options ``made``, a
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
    conditioner is an MLP with the given ``hidden`` widths; see `AffineCoupling` for the
    bounded scale. ``actnorm=True`` puts an `ActNorm` before every coupling (the
    data-initialised counterpart of the paper's batch normalisation): recommended for data
    whose features have very different scales, such as images. Shapes ``(batch, dim)``.
    See `maf()` for ``context_dim``, ``embedding_dim`` and the ``"conditional-normal"``
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
    scale_init: str = "zeros",
    scale_gain: float = 1.0,
    context_dim: int = 0,
    embedding_dim: int | None = None,
) -> Flow:
    r"""NICE (Dinh et al. 2014): ``layers`` additive couplings, then a diagonal scaling.

    $$
    z = e^{s} \odot (g_L \circ \dots \circ g_1)(x), \qquad
    \log p(x) = \log p_z(z) + \textstyle\sum_i s_i
    $$

    As in the paper's MNIST model: partitions alternate between odd and even indices,
    conditioners are ReLU MLPs (5 x 1000 by default) and the base is the standard logistic.
    ``actnorm=True`` (not in the paper) standardises the input with one data-initialised
    `ActNorm`, so that features of very different scales need not be rescaled by
    the slow gradient steps of ``s``. ``scale_init="data"`` (not in the paper) sets ``s``
    from the first training batch so that each feature of ``z`` starts with the base's
    spread (`DiagonalScaling`), instead of from zero. ``scale_gain=k`` (not in the paper)
    makes $s = k\theta$ for the trained $\theta$, so that under Adam $s$ climbs $k$ times as
    fast as the couplings learn (`DiagonalScaling`): on MNIST, from zero, $s$ at ten times
    the couplings' rate passed the data-initialised scaling's plateau within 6 epochs
    (``experiments/nice_pilots.py``).
    Shapes ``(batch, dim)``. See `maf()` for ``context_dim`` and ``embedding_dim``.
    """
    _check_int("dim", dim, 2)
    _check_int("layers", layers, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    couplings = [
        AdditiveCoupling(m, hidden=hidden, activation=activation, context_dim=inner)
        for m in _alternating_masks(mask, dim, layers)
    ]
    if scale_init not in ("zeros", "data"):
        raise ValueError(f"scale_init must be 'zeros' or 'data', got {scale_init!r}")
    spread = {"logistic": math.pi / math.sqrt(3)}.get(base, 1.0)  # the base's std
    first = [ActNorm(dim)] if actnorm else []
    scaling = DiagonalScaling(
        dim, target_scale=spread if scale_init == "data" else None, gain=scale_gain
    )
    transform = Compose(*first, *couplings, scaling)
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

    Each layer is `AffineAutoregressive`, $z_i = x_i e^{s_i(x_{<i})} +
    t_i(x_{<i})$, on a `MADE` with the given ``hidden`` widths
    (``residual=True``: residual connections). A ``permutation`` (``"reverse"``, as in the
    paper, or ``"random"``, seeded by ``seed``) between layers changes the ordering; with
    ``actnorm=True`` an `ActNorm` precedes each layer (the data-initialised stand-in
    for the paper's batch normalisation). ``log_prob`` is one pass per layer; ``sample`` takes
    ``dim`` small steps per layer that compute each hidden unit once
    (`autoregress()`: about one pass of arithmetic).

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
def cnf(
    dim: int,
    hidden: Sequence[int] = (64, 64, 64),
    *,
    activation: str = "tanh",
    trace: str = "exact",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    kinetic: float = 0.0,
    jacobian: float = 0.0,
    base: str = "normal",
    context_dim: int = 0,
    embedding_dim: int | None = None,
) -> Flow:
    r"""A continuous normalizing flow (Chen et al. 2018; FFJORD, Grathwohl et al. 2019): the
    time-1 map of $dx/dt = v(x, t \mid c)$ from the base at $t = 0$ to the data at $t = 1$.

    The field is a `flowforge.nn.TimeMLP` (time read by every layer, a smooth
    ``activation``, zero at the start); the map and its log-determinant come from one
    `ContinuousFlow` solve per call, with the exact trace by default (``trace="hutchinson"``
    for high ``dim``), an adaptive ``method`` at ``rtol``/``atol`` on each sample's own
    error (a point's log-density does not depend on its batch), or ``steps`` fixed steps.
    ``kinetic`` and ``jacobian`` weigh the regularisers of Finlay et al. (2020), which
    `flowforge.fit` adds to the loss (the NLL it reports stays the NLL). The evaluations
    of the last solve are in ``flow.transform.nfe``. See `maf()` for
    ``context_dim``, ``embedding_dim`` and ``base``. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    hidden = _check_hidden(hidden)
    inner = _inner_context(context_dim, embedding_dim)
    field = TimeMLP(dim, hidden, context_dim=inner, activation=activation)
    solver = dict(trace=trace, noise=noise, method=method, rtol=rtol, atol=atol, steps=steps)
    solver |= dict(kinetic=kinetic, jacobian=jacobian)
    return _flow(ContinuousFlow(field, **solver), base, dim, context_dim, embedding_dim)


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

    Each layer, in the generative direction, is $x_i = z_i e^{s_i(z_{<i})} +
    t_i(z_{<i})$: the one-pass forward of an `AffineAutoregressive` applied to the
    latent side (the flow's data -> latent transform holds their inverses), so
    ``sample_and_log_prob`` is one MADE pass per layer, the trade-off that variational
    inference wants, and ``log_prob`` of given data takes ``dim`` passes per layer
    (without gradients, ``dim`` small steps that compute each hidden unit once). Options as
    in `maf()` (no ActNorm: its data initialisation needs data, which VI does not have).
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

    Coupling form (default): `SplineCoupling` layers whose kept parts alternate as in
    `realnvp()` (``mask``); one pass in either direction. ``autoregressive=True``:
    `SplineAutoregressive` layers on MADEs with the ordering reversed between layers
    (density in one pass, sampling in ``dim``). Each feature gets a monotonic spline of
    ``bins`` bins on ``[-tail_bound, tail_bound]`` and the identity outside it, so the data
    should mostly lie inside (standardise it, or use ``actnorm=True``, which puts a
    data-initialised `ActNorm` before every layer). Conditional options as in
    `maf()`. Shapes ``(batch, dim)``.
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

    $x = f_K \circ \dots \circ f_1(z_0)$.
    The layers are defined in the generative direction (see `Planar`); ``log_prob(x)``
    inverts them exactly. ``base="diag-normal"`` gives the learnable Gaussian used for
    variational inference. Shapes ``(batch, dim)``.
    """
    _check_int("dim", dim, 1)
    _check_int("layers", layers, 1)
    return Flow(_generative([Planar(dim) for _ in range(layers)]), make_base(base, dim))


@_builder
def radial(dim: int, layers: int = 8, *, base: str = "normal") -> Flow:
    r"""Radial flow (Rezende & Mohamed 2015): ``layers`` radial maps from the base to the data.

    $x = f_K \circ \dots \circ f_1(z_0)$.
    The layers are defined in the generative direction (see `Radial`); ``log_prob(x)``
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

    After the `Logit` preprocessing, each scale but the last applies ``couplings``
    checkerboard couplings (alternating colours), a `Squeeze`, ``couplings``
    channel-wise couplings (alternating halves), then factors out half of the channels
    (`FactorOut`) and hands the rest to the next scale; the last scale applies
    ``couplings + 1`` checkerboard couplings. Conditioners are `ConvResNet` with
    ``blocks`` residual blocks of ``channels`` channels. ``actnorm=True`` puts an
    `ActNorm` after every coupling (the data-initialised stand-in for the paper's
    batch normalisation, which would make samples of a batch depend on each other). The latent
    keeps the data's shape; the standard-normal ``base`` factorises over the scales' parts.
    ``scale_bound`` and ``shift_bound`` bound each coupling (see
    `ChannelAffineCoupling`). ``context_dim`` and ``embedding_dim`` make it
    conditional, e.g. on a one-hot class label (see `maf()`; the couplings see the
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

    After the `Logit` preprocessing, each level applies a `Squeeze` and
    ``steps`` steps of flow, each an `ActNorm` (data-initialised), an
    `InvertibleConv1x1` (LU form) and a `ChannelAffineCoupling` whose
    conditioner is 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3 conv with ``channels`` channels
    (``blocks`` > 0 adds residual blocks). Every level but the last then factors out half of
    the channels. With ``learn_prior`` the factored half gets Glow's learned prior, a Gaussian
    whose mean and scale a zero-initialised convolution computes from the other half,
    written as the affine map $\epsilon = (z_1 - \mu(z_2)) e^{-\log\sigma(z_2)}$ into
    the standard-normal base (so temperature scales it too). Defaults are the paper's
    (L = 3, K = 32, 512 channels); the image must be divisible by ``2**levels``.
    ``scale_bound`` and ``shift_bound`` bound each coupling (see `ChannelAffineCoupling`).
    ``context_dim`` and ``embedding_dim`` make it conditional (see `realnvp_image()`; the
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
