"""The transform abstraction: a bijection that returns its log-determinant in the same pass.

Convention used everywhere in flowforge: a transform's ``forward`` maps data ``x`` to the
latent ``z``, and returns ``(z, log|det dz/dx|)``; ``inverse`` maps ``z`` back to ``x`` and
returns ``(x, log|det dx/dz|)``. Both log-determinants have shape ``(batch,)``, one value per
sample. Every call takes an optional ``context`` tensor of shape ``(batch, context_dim)``;
unconditional transforms ignore it.

Every ``forward`` and ``inverse`` first checks its input cheaply (`check_input()`: type,
dtype and shape only), so that bad input gives one line rather than an error deep in torch.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Method = Callable[..., tuple[Tensor, Tensor]]


def static_sizes(shape: Sequence[int | Tensor]) -> tuple[int, ...]:
    """A shape as Python ints. Under ``torch.jit.trace`` (Pyro's ``JitTrace_ELBO``) sizes are
    0-d tensors, Pyro's plate sizes among them; a flow's trace is specialised to its shapes
    (Pyro's JIT asks for static shapes), so the conversion's TracerWarning says nothing and
    is silenced."""
    if not torch.jit.is_tracing():
        return tuple(int(size) for size in shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(size) for size in shape)


def check_input(transform: Transform, direction: str, x: object, context: object) -> None:
    """Raise a one-line TypeError or ValueError unless ``x`` is a floating tensor with a batch
    dimension (of ``(batch, *transform.event_shape)`` and of the parameters' dtype when the
    event shape is known) and ``context`` is None or a ``(batch, k)`` tensor of ``x``'s dtype.

    Only types, dtypes and shapes are read: no values, so no device synchronisation, and
    ``torch.compile`` traces it without a graph break (the checks become guards).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{_where(transform, direction)} a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{_where(transform, direction)} a floating tensor, got dtype {x.dtype}; "
            f"convert with x.float()"
        )
    event = transform.event_shape
    # under jit.trace the sizes are traced tensors: compare them as ints, without warnings
    shape = static_sizes(x.shape[1:]) if torch.jit.is_tracing() else x.shape[1:]
    if x.dim() < 1 or (event is not None and shape != event):
        expected = ", ".join(["batch", *(["*event_shape"] if event is None else map(str, event))])
        raise ValueError(
            f"{_where(transform, direction)} input of shape ({expected}), got {tuple(x.shape)}"
        )
    if event is not None and not torch.compiler.is_compiling():  # a flow's whole transform
        weight = _first_weight(transform)
        if weight is not None and weight.is_floating_point() and weight.dtype != x.dtype:
            raise TypeError(
                f"{_where(transform, direction)} input of its dtype {weight.dtype}, got "
                f"{x.dtype}; convert with x.to({weight.dtype})"
            )
    if context is None:
        return
    if not isinstance(context, Tensor):
        raise TypeError(
            f"{_where(transform, direction)} a context that is a torch.Tensor, "
            f"got {type(context).__name__}"
        )
    if context.dtype != x.dtype:
        raise TypeError(
            f"{_where(transform, direction)} a context of the input's dtype {x.dtype}, got "
            f"{context.dtype}; convert with context.to({x.dtype})"
        )
    if context.dim() != 2 or context.shape[0] != x.shape[0]:
        raise ValueError(
            f"{_where(transform, direction)} a context of shape ({x.shape[0]}, k), one row per "
            f"sample, got {tuple(context.shape)}"
        )


def _first_weight(module: nn.Module) -> Tensor | None:
    """The module's first parameter, depth first (1 us, five times faster than
    ``next(module.parameters())``, which builds the whole module walk)."""
    for weight in module._parameters.values():
        if weight is not None:
            return weight
    for child in module._modules.values():
        weight = None if child is None else _first_weight(child)
        if weight is not None:
            return weight
    return None


def _where(transform: Transform, direction: str) -> str:
    return f"{type(transform).__name__}.{direction} expects"


def _checked(method: Method, direction: str) -> Method:
    """``method`` (a subclass's ``forward`` or ``inverse``) with `check_input()` first."""

    @functools.wraps(method)
    def checked(
        self: Transform, x: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        check_input(self, direction, x, args[0] if args else kwargs.get("context"))
        return method(self, x, *args, **kwargs)

    checked.checks_input = True
    return checked


class Transform(nn.Module, ABC):
    r"""An invertible map $f$ with its log-Jacobian-determinant.

    Subclasses implement `forward()` and `inverse()`, each returning the output and
    the log-determinant computed in the same pass:

    $$
    z = f(x),\ \log|\det \partial f / \partial x| \qquad
    x = f^{-1}(z),\ \log|\det \partial f^{-1} / \partial z|
    $$

    Shapes: input ``(batch, *event_shape)``, output the same, log-determinant ``(batch,)``.

    Refused by every ``forward`` and ``inverse`` (see `check_input()`), with one line: an
    input that is not a floating tensor with a batch dimension (or, where ``event_shape`` is
    known, of another shape or dtype), a context that is not a ``(batch, k)`` tensor of its
    dtype.
    """

    #: The shape of one sample where it is known (a `Flow` sets it on its
    #: transform), else None; calls then refuse inputs of other shapes.
    event_shape: torch.Size | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for direction in ("forward", "inverse"):
            method = cls.__dict__.get(direction)
            wrap = callable(method) and not getattr(method, "checks_input", False)
            if wrap and not getattr(method, "__isabstractmethod__", False):
                setattr(cls, direction, _checked(method, direction))

    @abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``(z, log|det dz/dx|)``."""

    @abstractmethod
    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map latent to data: ``(x, log|det dx/dz|)``."""

    def map_inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The latent -> data map alone, ``x``, where the log-determinant is not wanted
        (sampling); transforms whose log-determinant costs extra work skip it here."""
        return self.inverse(z, context)[0]

    @property
    def inv(self) -> Transform:
        """The same bijection with its directions swapped (shares parameters)."""
        return Inverse(self)


class Inverse(Transform):
    r"""The inverse $f^{-1}$ of a transform $f$, sharing its parameters."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, context)

    @property
    def inv(self) -> Transform:
        return self.transform


class Compose(Transform):
    r"""The composition $f = f_K \circ \dots \circ f_1$: ``transforms[0]`` is applied first.

    $$
    \log|\det \partial f/\partial x| = \sum_k \log|\det \partial f_k/\partial h_{k-1}|
    $$

    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("Compose needs at least one transform, got none")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logdet = transform(x, context)
            total = total + logdet
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for transform in reversed(self.transforms):
            z, logdet = transform.inverse(z, context)
            total = total + logdet
        return z, total

    def map_inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        for transform in reversed(self.transforms):
            z = transform.map_inverse(z, context)
        return z

    def trace(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate of the forward pass: ``[x, f_1(x), f_2(f_1(x)), ..., z]``."""
        states = [x]
        for transform in self.transforms:
            x, _ = transform(x, context)
            states.append(x)
        return states

    def trace_inverse(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate of the inverse pass: ``[z, f_K^{-1}(z), ..., x]``."""
        states = [z]
        for transform in reversed(self.transforms):
            z = transform.map_inverse(z, context)
            states.append(z)
        return states

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]


def steps(transform: Transform) -> list[Transform]:
    """The data -> latent layers of a transform, in order, with compositions unrolled.

    ``Compose(a, b)`` gives ``[a, b]``; ``Inverse(Compose(a, b))`` gives ``[b.inv, a.inv]``;
    any other transform gives ``[transform]``. Used to follow samples layer by layer.
    """
    if isinstance(transform, Compose):
        return [s for t in transform.transforms for s in steps(t)]
    if isinstance(transform, Inverse) and isinstance(transform.transform, Compose):
        return [s.inv for s in reversed(steps(transform.transform))]
    return [transform]
