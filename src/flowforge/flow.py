r"""The :class:`Flow`: a base distribution and a transform, as a module and a distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from .distributions import BaseDistribution
from .transforms import Transform


class Flow(nn.Module, Distribution):
    r"""A normalizing flow :math:`p(x) = p_z(f(x))\,|\det \partial f/\partial x|`.

    ``transform`` is :math:`f`, mapping data to latent; ``base`` is :math:`p_z`.

    .. math::
        \log p(x) = \log p_z(f(x)) + \log|\det \partial f / \partial x|, \qquad
        x = f^{-1}(z),\ z \sim p_z

    It is an ``nn.Module`` (``.to(device)``, ``.double()``, ``state_dict``, optimisers) and a
    ``torch.distributions.Distribution`` (``log_prob``, ``sample``, ``rsample``,
    ``event_shape``), so it fits wherever either is expected. ``flow(x)`` is ``log_prob(x)``.

    Shapes: ``x`` is ``(*batch, *event_shape)``, ``log_prob(x)`` is ``(*batch,)``; ``sample(n)``
    is ``(n, *event_shape)``. With a ``context`` of shape ``(m, k)``, ``sample(n, context)``
    draws ``n`` samples per context row: ``(m, n, *event_shape)``.

    Args:
        transform: the data -> latent map :math:`f`.
        base: the latent distribution :math:`p_z`.
        validate_args: check inputs for NaN on every call (shape and dtype are always checked);
            turn off to save the check's device synchronisation in tight loops.
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

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the flow's tensors."""
        return self.base.loc.dtype

    @property
    def device(self) -> torch.device:
        return self.base.loc.device

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """:math:`\\log p(x)` in nats: ``(*batch, *event_shape) -> (*batch,)``."""
        self._check(x, "x")
        batch_shape = x.shape[: x.dim() - len(self.event_shape)]
        x = x.reshape(-1, *self.event_shape)
        if context is not None:
            if context.dim() != len(batch_shape) + 1 or context.shape[:-1] != batch_shape:
                rows = ", ".join(map(str, batch_shape))
                raise ValueError(
                    f"context must have one row per sample, shape ({rows}, k), "
                    f"got {tuple(context.shape)}"
                )
            context = self._embed(context.reshape(x.shape[0], -1))
        z, logdet = self.transform(x, context)
        return (self.base.log_prob(z, context) + logdet).reshape(batch_shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def sample_and_log_prob(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples and their log-density, from one pass:

        .. math:: z \sim p_z,\quad x = f^{-1}(z),\quad
                  \log p(x) = \log p_z(z) - \log|\det \partial f^{-1}/\partial z|

        Gradients flow into the parameters of the base and the transform (for the reverse
        KL of variational inference). Returns ``(*sample_shape, *event_shape)`` and
        ``(*sample_shape,)``, with a leading ``m`` dimension for a context of ``m`` rows.
        """
        shape, n, context = self._expand(sample_shape, context)
        z, log_pz = self.base.sample_and_log_prob(n, context)
        x, logdet = self.transform.inverse(z, context)
        return x.reshape(*shape, *self.event_shape), (log_pz - logdet).reshape(shape)

    def rsample(
        self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> Tensor:
        """Reparameterised samples ``(*sample_shape, *event_shape)``."""
        return self.sample_and_log_prob(sample_shape, context)[0]

    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        r"""Samples ``(*sample_shape, *event_shape)``, without gradients.

        ``temperature`` ``T`` draws the latent from the base with its spread scaled by ``T``
        about its location, :math:`z = \mu + T (z_0 - \mu)`, then maps it to data; ``T < 1``
        gives typical-looking samples (Kingma & Dhariwal 2018), ``T = 0`` the image of
        :math:`\mu`.
        """
        if not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature}")
        shape, n, context = self._expand(sample_shape, context)
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
        """The output's batch shape, the number of draws, and the context repeated per draw."""
        shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
        n = math.prod(shape)
        if context is None:
            return shape, n, None
        if context.dim() != 2:
            raise ValueError(f"context must have shape (m, k), got {tuple(context.shape)}")
        m = context.shape[0]
        return (m, *shape), n * m, self._embed(context).repeat_interleave(n, 0)

    def _embed(self, context: Tensor) -> Tensor:
        """The context as the transform and base see it: ``embedding(context)`` if any."""
        return context if self.embedding is None else self.embedding(context)

    def _check(self, x: Tensor, name: str) -> None:
        """Raise a one-line error unless ``x`` is a ``(*batch, *event_shape)`` tensor of the
        flow's dtype without NaN."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != self.dtype:
            hint = f"x.to({self.dtype})" + (
                f" or flow.to({x.dtype})" if x.is_floating_point() else ""
            )
            raise TypeError(
                f"{name} has dtype {x.dtype} but the flow is {self.dtype}; convert with {hint}"
            )
        k = len(self.event_shape)
        if x.dim() < k or x.shape[x.dim() - k :] != self.event_shape:
            expected = ", ".join(["batch", *map(str, self.event_shape)])
            raise ValueError(f"{name} must have shape ({expected}), got {tuple(x.shape)}")
        if self.validate_args and torch.isnan(x).any():
            raise ValueError(
                f"{name} contains {int(torch.isnan(x).sum())} NaN values; expected finite numbers"
            )

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
