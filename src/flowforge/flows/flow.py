r"""The `Flow`: a base distribution and a transform, as a module and a distribution."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from flowforge.flows.distributions import BaseDistribution, TorchBase
from flowforge.transforms import Transform
from flowforge.transforms.base import static_sizes

if TYPE_CHECKING:
    from flowforge.interop.pyro import PyroFlow

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
    synchronisation when it has none). Skipped while ``torch.jit.trace`` records the call (as
    Pyro's ``JitTrace_ELBO`` does), where a data-dependent check cannot be part of a graph."""
    if torch.jit.is_tracing():
        return
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
    is ``(n, *event_shape)``. With a ``context`` of shape ``(*context_batch, k)``,
    ``sample(n, context)`` draws ``n`` samples per context: ``(n, *context_batch,
    *event_shape)``, as torch, zuko and sbi lay them out; in ``log_prob(x, context)`` the
    batch dimensions of ``x`` and the context broadcast. Empty batches work:
    ``log_prob`` of ``(0, *event_shape)`` is ``(0,)``, ``sample(0)`` is ``(0, *event_shape)``.

    Refused, with a one-line ``TypeError`` or ``ValueError`` that says what was given and what
    is expected: a sample shape that is not an int >= 0 or a sequence of them; an ``x`` or
    ``context`` that is not a tensor of the flow's dtype and of the shapes above (the context
    ``k`` wide, see `context_dim`); a context for an unconditional flow, or none for a
    conditional one; with ``validate_args``, NaN or infinite values in ``x`` or ``context``.

    Args:
        transform: the data -> latent map $f$.
        base: the latent distribution $p_z$: a flowforge base, or any
            ``torch.distributions.Distribution`` over vectors (wrapped in `TorchBase`).
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
        base: BaseDistribution | Distribution,
        embedding: nn.Module | None = None,
        validate_args: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        if isinstance(base, Distribution):  # any torch distribution over vectors
            base = TorchBase(base)
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

        ``context``: ``(*context_batch, k)``, required by a conditional flow and refused by an
        unconditional one; its batch dimensions broadcast against ``x``'s, as torch's do (a
        context ``(k,)`` or ``(1, k)`` serves every ``x``; ``x`` of shape ``(n, m, *event)``
        is scored under the ``m`` contexts ``(m, k)``), and the result has the broadcast
        batch shape. Refused too: an ``x`` that is not a tensor of the flow's dtype and of
        this shape, batch shapes that do not broadcast and, with ``validate_args``, NaN or
        infinite values (see `Flow`).
        """
        self._check(x, "x")
        batch_shape = x.shape[: x.dim() - len(self.event_shape)]
        context = self._check_context(context)
        if context is not None:
            try:
                batch_shape = torch.broadcast_shapes(batch_shape, context.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"x has batch shape {tuple(batch_shape)} and context batch shape "
                    f"{tuple(context.shape[:-1])}, which do not broadcast; expected equal "
                    "shapes, or 1 (or nothing) where one of them is shared"
                ) from None
            context = context.expand(*batch_shape, context.shape[-1])
            x = x.expand(*batch_shape, *self.event_shape)
        n = math.prod(batch_shape)
        if n == 0:  # nothing to evaluate (nor to initialise ActNorm from)
            return x.new_zeros(batch_shape)
        x = x.reshape(n, *self.event_shape)
        if context is not None:
            context = self._embed(context.reshape(n, context.shape[-1]))
        z, logdet = self.transform(x, context)
        return (self.base.log_prob(z, context) + logdet).reshape(batch_shape)

    def condition(self, context: Tensor) -> ConditionedFlow:
        """$q(\\cdot \\mid c)$ as a ``torch.distributions.Distribution`` of ``batch_shape``
        ``context.shape[:-1]``: its ``sample``, ``rsample``, ``rsample_and_log_prob`` and
        ``log_prob`` take no context, so it goes wherever a distribution is expected (zuko's
        ``flow(c)``, sbi's ``posterior.set_default_x``).

        Examples:
            >>> import torch, flowforge as ff
            >>> flow = ff.models.maf(dim=2, context_dim=3)
            >>> q = flow.condition(torch.randn(5, 3))
            >>> q.batch_shape, q.sample((7,)).shape, q.log_prob(q.sample()).shape
            (torch.Size([5]), torch.Size([7, 5, 2]), torch.Size([5]))
        """
        if self.context_dim == 0:
            raise ValueError("this flow is not conditional; use the flow itself, or expand()")
        return ConditionedFlow(self, self._check_context(context))

    def expand(self, batch_shape: Sequence[int], _instance: object = None) -> ConditionedFlow:
        """The flow with batch dimensions ``batch_shape``, as torch's ``Distribution.expand``:
        independent draws of the same flow, ``sample(s)`` of shape ``(*s, *batch_shape,
        *event_shape)`` (Pyro's plates and vectorised particles expand distributions so)."""
        if self.context_dim != 0:
            raise ValueError(
                "a conditional flow needs its context first: flow.condition(c).expand(shape)"
            )
        return ConditionedFlow(self, None, batch_shape)

    def as_pyro(self, context: Tensor | None = None) -> PyroFlow:
        """The flow as a Pyro distribution: `flowforge.interop.pyro.as_pyro` (needs
        ``pip install 'flowforge[pyro]'``), kept here as a short alias."""
        from flowforge.interop.pyro import as_pyro  # the core never imports interop eagerly

        return as_pyro(self, context)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(
            "a flow's mean has no closed form; estimate it by flow.sample(n).mean(0)"
        )

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(
            "a flow's variance has no closed form; estimate it by flow.sample(n).var(0)"
        )

    def entropy(self) -> Tensor:
        raise NotImplementedError(
            "a flow's entropy has no closed form; estimate it by "
            "-flow.log_prob(flow.sample(n)).mean()"
        )

    def statistics(self) -> dict[str, float]:
        """What the layers report of their last call, summed over the layers that report
        (a continuous flow's evaluations ``nfe_forward`` and ``nfe_backward`` and its
        regularisers); ``{}`` for a flow of closed-form layers."""
        found: dict[str, float] = {}
        for module in self.transform.modules():
            report = getattr(module, "statistics", None)
            if callable(report):
                for key, value in report().items():
                    found[key] = found.get(key, 0) + value
        return found

    def penalty(self) -> Tensor | None:
        """The sum of the penalties that the layers computed in the last call, with
        gradients (a regularised continuous flow's; `flowforge.fit` adds it to the loss),
        or None."""
        terms = [getattr(m, "penalty", None) for m in self.transform.modules()]
        terms = [term for term in terms if isinstance(term, Tensor)]
        return sum(terms[1:], terms[0]) if terms else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``flow(x, context)`` is `log_prob()` (same shapes, same refusals)."""
        return self.log_prob(x, context)

    def rsample_and_log_prob(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples and their log-density, from one pass:

        $$
        z \sim p_z,\quad x = f^{-1}(z),\quad
        \log p(x) = \log p_z(z) - \log|\det \partial f^{-1}/\partial z|
        $$

        Gradients flow into the parameters of the base and the transform (for the reverse
        KL of variational inference). Returns ``(*sample_shape, *context_batch,
        *event_shape)`` and ``(*sample_shape, *context_batch)`` for a context of shape
        ``(*context_batch, k)`` (``(k,)``: one context), the layout of torch, zuko and sbi.
        Refused: a ``sample_shape`` that is not an int >= 0 or a sequence of them, and a
        context that is not ``(..., k)`` of the flow's dtype, or missing or superfluous.
        ``sample_and_log_prob`` is the same method.
        """
        shape, n, context = self._expand(sample_shape, context)
        if n == 0:
            return self._zeros(*shape, *self.event_shape), self._zeros(*shape)
        z, log_pz = self.base.sample_and_log_prob(n, context)
        x, logdet = self.transform.inverse(z, context)
        return x.reshape(*shape, *self.event_shape), (log_pz - logdet).reshape(shape)

    sample_and_log_prob = rsample_and_log_prob

    def rsample(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> Tensor:
        """Reparameterised samples ``(*sample_shape, *context_batch, *event_shape)`` (refusals
        as in `rsample_and_log_prob()`)."""
        return self.rsample_and_log_prob(sample_shape, context)[0]

    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        r"""Samples ``(*sample_shape, *context_batch, *event_shape)``, without gradients.

        ``temperature`` ``T`` draws the latent from the base with its spread scaled by ``T``
        about its location, $z = \mu + T (z_0 - \mu)$, then maps it to data; ``T < 1``
        gives typical-looking samples (Kingma & Dhariwal 2018), ``T = 0`` the image of
        $\mu$. Refused: a ``temperature`` that is not a finite number >= 0, and what
        `rsample_and_log_prob()` refuses.
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
            x = self.transform.map_inverse(z, context)
        return x.reshape(*shape, *self.event_shape)

    def _expand(
        self, sample_shape: int | Sequence[int], context: Tensor | None
    ) -> tuple[tuple[int, ...], int, Tensor | None]:
        """The output's batch shape ``(*sample_shape, *context_batch)``, the number of draws,
        and the embedded context tiled to one row per draw, sample-major (both checked)."""
        shape = sample_shape_tuple(sample_shape)
        n = math.prod(shape)
        context = self._check_context(context)
        if context is None:
            return shape, n, None
        rows = context.shape[:-1]
        m = math.prod(rows)
        if n * m == 0:
            return (*shape, *rows), 0, None
        embedded = self._embed(context.reshape(m, context.shape[-1]))
        return (*shape, *rows), n * m, embedded.repeat(n, 1)

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

    def _check_context(self, context: object) -> Tensor | None:
        """``context``, checked against the flow: ``(*context_batch, k)`` of the flow's dtype,
        given exactly when the flow is conditional; a one-line error otherwise."""
        k = self.context_dim
        width = "k" if k is None else k
        if context is None:
            if k == 0:
                return None
            raise ValueError(
                f"this flow is conditional: expected a context of shape (..., {width}), got none"
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
        if context.dim() == 0 or (k is not None and context.shape[-1] != k):
            raise ValueError(
                f"context must have shape (..., {width}): its last dimension the context's "
                f"width, got {tuple(context.shape)}"
            )
        if self.validate_args:
            _check_finite(context, "context")
        return context


class ConditionedFlow(Distribution):
    r"""A `Flow` with fixed contexts, or with batch dimensions: $q(\cdot \mid c)$ for each row
    of ``context`` ``(*batch_shape, k)`` (`Flow.condition`), or independent copies of an
    unconditional flow (`Flow.expand`). A ``torch.distributions.Distribution`` whose methods
    take no context: ``sample(s)`` and ``rsample(s)`` are ``(*s, *batch_shape, *event_shape)``,
    ``log_prob(x)`` broadcasts ``x`` ``(..., *event_shape)`` against ``batch_shape``.
    It holds the flow, so training the flow changes it.
    """

    arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution protocol)
    has_rsample = True

    def __init__(
        self, flow: Flow, context: Tensor | None = None, batch_shape: Sequence[int] = ()
    ) -> None:
        rows = () if context is None else context.shape[:-1]
        batch_shape = static_sizes(batch_shape)
        try:
            shape = static_sizes(torch.broadcast_shapes(rows, batch_shape))
        except RuntimeError:
            raise ValueError(
                f"cannot expand contexts of batch shape {tuple(rows)} to {tuple(batch_shape)}"
            ) from None
        self.flow = flow
        self.context = None if context is None else context.expand(*shape, context.shape[-1])
        super().__init__(shape, flow.event_shape, validate_args=False)

    @property
    def support(self):
        return self.flow.support

    def expand(self, batch_shape: Sequence[int], _instance: object = None) -> ConditionedFlow:
        return type(self)(self.flow, self.context, batch_shape)

    def rsample_and_log_prob(self, sample_shape: int | Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """Draws ``(*sample_shape, *batch_shape, *event_shape)`` with their log-density, one
        pass (`Flow.rsample_and_log_prob`)."""
        if self.context is None:
            shape = (*sample_shape_tuple(sample_shape), *self.batch_shape)
            return self.flow.rsample_and_log_prob(shape)
        return self.flow.rsample_and_log_prob(sample_shape, self.context)

    sample_and_log_prob = rsample_and_log_prob

    def rsample(self, sample_shape: int | Sequence[int] = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: int | Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """``(..., *event_shape) -> (...)``, the batch dimensions broadcast with
        ``batch_shape``."""
        if self.context is None:
            log_p = self.flow.log_prob(x)
            return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))
        return self.flow.log_prob(x, self.context)
