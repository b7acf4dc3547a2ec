r"""The `Flow`: a base distribution and a transform, as a module and a distribution."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from flowforge.flows.distributions import BaseDistribution
from flowforge.transforms import Transform

SAMPLE_SHAPE = "an int >= 0 or a sequence of them, such as 100 or (10, 10)"


def _show(value: object) -> str:
    """``value`` in a few characters on one line, for an error message."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor or an array
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _shape_text(parts: Sequence[object]) -> str:
    """``("m", 3) -> "(m, 3)"``, ``(3,) -> "(3,)"``."""
    return f"({', '.join(map(str, parts))}{',' if len(parts) == 1 else ''})"


def sample_shape_tuple(sample_shape: object) -> tuple[int, ...]:
    """``sample_shape`` (an int or a sequence of ints, each >= 0) as a tuple; a one-line
    TypeError (not an int: a bool, a float, a string) or ValueError (negative) otherwise."""
    sequence = isinstance(sample_shape, Sequence) and not isinstance(sample_shape, str | bytes)
    items = tuple(sample_shape) if sequence else (sample_shape,)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            kind = f"whose entry {_show(item)} is a " if sequence else "of type "
            raise TypeError(
                f"sample_shape must be {SAMPLE_SHAPE}; got {_show(sample_shape)}, "
                f"{kind}{type(item).__name__}"
            )
    if any(item < 0 for item in items):
        raise ValueError(f"sample_shape must be {SAMPLE_SHAPE}; got {_show(sample_shape)}")
    return tuple(int(item) for item in items)


def _check_finite(value: Tensor, name: str) -> None:
    """Raise a one-line ValueError if ``value`` has NaN or infinite entries (one device
    synchronisation when it has none)."""
    if not torch.isfinite(value).all():
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        counts = [f"{nan} NaN"] * bool(nan) + [f"{inf} infinite"] * bool(inf)
        raise ValueError(f"{name} contains {' and '.join(counts)} values; expected finite numbers")


def _context_width(
    transform: nn.Module, base: nn.Module, embedding: nn.Module | None
) -> int | None:
    """The context width a flow's parts expect: the embedding's input width (None if it has no
    linear layer to read it from), else the widest ``context_dim`` of a layer or the base
    (0: unconditional)."""
    if embedding is not None:
        linear = next((m for m in embedding.modules() if isinstance(m, nn.Linear)), None)
        return None if linear is None else linear.in_features
    widths = (getattr(m, "context_dim", 0) for m in (*transform.modules(), *base.modules()))
    return max((w for w in widths if isinstance(w, int)), default=0)


class Flow(nn.Module, Distribution):
    r"""A normalizing flow $p(x) = p_z(f(x))\,|\det \partial f/\partial x|$.

    ``transform`` is $f$, mapping data to latent; ``base`` is $p_z$.

    $$
    \log p(x) = \log p_z(f(x)) + \log|\det \partial f / \partial x|, \qquad
    x = f^{-1}(z),\ z \sim p_z
    $$

    It is an ``nn.Module`` (``.to(device)``, ``.double()``, ``state_dict``, optimisers) and a
    ``torch.distributions.Distribution`` (``log_prob``, ``sample``, ``rsample``,
    ``event_shape``), so it fits wherever either is expected. ``flow(x)`` is ``log_prob(x)``.

    Shapes: ``x`` is ``(*batch, *event_shape)``, ``log_prob(x)`` is ``(*batch,)``; ``sample(n)``
    is ``(n, *event_shape)``. With a ``context`` of shape ``(m, k)``, ``sample(n, context)``
    draws ``n`` samples per context row: ``(m, n, *event_shape)``. Empty batches work:
    ``log_prob`` of ``(0, *event_shape)`` is ``(0,)``, ``sample(0)`` is ``(0, *event_shape)``.

    Refused, with a one-line ``TypeError`` or ``ValueError`` that says what was given and what
    is expected: a sample shape that is not an int >= 0 or a sequence of them; an ``x`` or
    ``context`` that is not a tensor of the flow's dtype and of the shapes above (the context
    ``k`` wide, see `context_dim`); a context for an unconditional flow, or none for a
    conditional one; with ``validate_args``, NaN or infinite values in ``x`` or ``context``.

    Args:
        transform: the data -> latent map $f$.
        base: the latent distribution $p_z$.
        embedding: an optional network applied to the context before the transform and base.
        validate_args: check inputs for NaN and infinite values on every call (shape and dtype
            are always checked); turn off to save the check's device synchronisation in tight
            loops.
    """

    arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution protocol)
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        transform: Transform,
        base: BaseDistribution,
        embedding: nn.Module | None = None,
        validate_args: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        Distribution.__init__(
            self, batch_shape=torch.Size(), event_shape=base.event_shape, validate_args=False
        )
        self.transform = transform
        self.base = base
        self.embedding = embedding
        self.validate_args = validate_args
        self.config: dict | None = None
        self._inferred_context_dim = _context_width(transform, base, embedding)
        if isinstance(transform, Transform) and transform.event_shape is None:
            transform.event_shape = base.event_shape  # so that direct calls check it too

    @property
    def context_dim(self) -> int | None:
        """The width ``k`` of the context: 0 for an unconditional flow; ``config["context_dim"]``
        for a built model, else what the embedding, the layers and the base expect (None: a
        conditional flow whose width is unknown, so that only the rows are checked)."""
        width = (self.config or {}).get("context_dim")
        return self._inferred_context_dim if width is None else int(width)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the flow's tensors."""
        return self.base.loc.dtype

    @property
    def device(self) -> torch.device:
        return self.base.loc.device

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """$\\log p(x)$ in nats: ``(*batch, *event_shape) -> (*batch,)``.

        ``context``: ``(*batch, k)``, required by a conditional flow and refused by an
        unconditional one. Refused too: an ``x`` that is not a tensor of the flow's dtype and
        of this shape and, with ``validate_args``, NaN or infinite values (see `Flow`).
        """
        self._check(x, "x")
        batch_shape = x.shape[: x.dim() - len(self.event_shape)]
        context = self._check_context(context, batch_shape)
        n = math.prod(batch_shape)
        if n == 0:  # nothing to evaluate (nor to initialise ActNorm from)
            return x.new_zeros(batch_shape)
        x = x.reshape(n, *self.event_shape)
        if context is not None:
            context = self._embed(context.reshape(n, context.shape[-1]))
        z, logdet = self.transform(x, context)
        return (self.base.log_prob(z, context) + logdet).reshape(batch_shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``flow(x, context)`` is `log_prob()` (same shapes, same refusals)."""
        return self.log_prob(x, context)

    def sample_and_log_prob(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples and their log-density, from one pass:

        $$
        z \sim p_z,\quad x = f^{-1}(z),\quad
        \log p(x) = \log p_z(z) - \log|\det \partial f^{-1}/\partial z|
        $$

        Gradients flow into the parameters of the base and the transform (for the reverse
        KL of variational inference). Returns ``(*sample_shape, *event_shape)`` and
        ``(*sample_shape,)``, with a leading ``m`` dimension for a context of ``m`` rows.
        Refused: a ``sample_shape`` that is not an int >= 0 or a sequence of them, and a
        context that is not ``(m, k)`` of the flow's dtype, or missing or superfluous.
        """
        shape, n, context = self._expand(sample_shape, context)
        if n == 0:
            return self._zeros(*shape, *self.event_shape), self._zeros(*shape)
        z, log_pz = self.base.sample_and_log_prob(n, context)
        x, logdet = self.transform.inverse(z, context)
        return x.reshape(*shape, *self.event_shape), (log_pz - logdet).reshape(shape)

    def rsample(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> Tensor:
        """Reparameterised samples ``(*sample_shape, *event_shape)`` (refusals as in
        `sample_and_log_prob()`)."""
        return self.sample_and_log_prob(sample_shape, context)[0]

    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        r"""Samples ``(*sample_shape, *event_shape)``, without gradients.

        ``temperature`` ``T`` draws the latent from the base with its spread scaled by ``T``
        about its location, $z = \mu + T (z_0 - \mu)$, then maps it to data; ``T < 1``
        gives typical-looking samples (Kingma & Dhariwal 2018), ``T = 0`` the image of
        $\mu$. Refused: a ``temperature`` that is not a finite number >= 0, and what
        `sample_and_log_prob()` refuses.
        """
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a number >= 0, got {_show(temperature)}")
        if not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        shape, n, context = self._expand(sample_shape, context)
        if n == 0:
            return self._zeros(*shape, *self.event_shape)
        with torch.no_grad():
            z = self.base.rsample(n, context)
            if temperature != 1.0:
                loc = self.base.location(context)
                z = loc + temperature * (z - loc)
            x, _ = self.transform.inverse(z, context)
        return x.reshape(*shape, *self.event_shape)

    def _expand(
        self, sample_shape: int | Sequence[int], context: Tensor | None
    ) -> tuple[tuple[int, ...], int, Tensor | None]:
        """The output's batch shape, the number of draws, and the context repeated per draw
        (both checked)."""
        shape = sample_shape_tuple(sample_shape)
        n = math.prod(shape)
        context = self._check_context(context, None)
        if context is None:
            return shape, n, None
        m = context.shape[0]
        return (m, *shape), n * m, self._embed(context).repeat_interleave(n, 0)

    def _embed(self, context: Tensor) -> Tensor:
        """The context as the transform and base see it: ``embedding(context)`` if any."""
        return context if self.embedding is None else self.embedding(context)

    def _zeros(self, *shape: int) -> Tensor:
        """An (empty) result of the flow's dtype and device."""
        return self.base.loc.new_zeros(shape)

    def _check(self, x: Tensor, name: str) -> None:
        """Raise a one-line error unless ``x`` is a ``(*batch, *event_shape)`` tensor of the
        flow's dtype (and, with ``validate_args``, finite)."""
        self._check_tensor(x, name)
        k = len(self.event_shape)
        if x.dim() < k or x.shape[x.dim() - k :] != self.event_shape:
            expected = ", ".join(["batch", *map(str, self.event_shape)])
            raise ValueError(f"{name} must have shape ({expected}), got {tuple(x.shape)}")
        if self.validate_args:
            _check_finite(x, name)

    def _check_tensor(self, value: object, name: str) -> None:
        """Raise a one-line TypeError unless ``value`` is a tensor of the flow's dtype."""
        if not isinstance(value, Tensor):
            hint = "; convert with torch.as_tensor" if hasattr(value, "__array__") else ""
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}{hint}")
        if value.dtype != self.dtype:
            hint = f"{name}.to({self.dtype})" + (
                f" or flow.to({value.dtype})" if value.is_floating_point() else ""
            )
            raise TypeError(
                f"{name} has dtype {value.dtype} but the flow is {self.dtype}; convert with {hint}"
            )

    def _check_context(self, context: object, batch_shape: Sequence[int] | None) -> Tensor | None:
        """``context``, checked against the flow: ``(*batch_shape, k)`` (``log_prob``) or
        ``(m, k)`` (sampling: ``batch_shape`` None) of the flow's dtype, given exactly when
        the flow is conditional; a one-line error otherwise."""
        k = self.context_dim
        width = "k" if k is None else k
        rows = ["m"] if batch_shape is None else list(batch_shape)
        if context is None:
            if k == 0:
                return None
            raise ValueError(
                f"this flow is conditional: expected context of shape "
                f"{_shape_text([*rows, width])}, got none"
            )
        if k == 0:
            given = (
                f"of shape {tuple(context.shape)}"
                if isinstance(context, Tensor)
                else f"of type {type(context).__name__}"
            )
            raise ValueError(
                f"this flow is not conditional; got a context {given} (call it without one)"
            )
        self._check_tensor(context, "context")
        shape = tuple(context.shape)
        with_k = "" if k is None else f" with k = {k}"
        if batch_shape is None:
            if context.dim() != 2 or (k is not None and shape[1] != k):
                raise ValueError(f"context must have shape (m, k){with_k}, got {shape}")
        elif (
            context.dim() != len(rows) + 1
            or shape[:-1] != tuple(rows)
            or (k is not None and shape[-1] != k)
        ):
            raise ValueError(
                f"context must have one row per sample, shape {_shape_text([*rows, 'k'])}"
                f"{with_k}, got {shape}"
            )
        if self.validate_args:
            _check_finite(context, "context")
        return context

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
