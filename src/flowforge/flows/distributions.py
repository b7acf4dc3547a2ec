"""Base distributions of flows, as modules (they move with ``.to()`` and ``.double()``).

Each one has an ``event_shape`` and gives, for ``z`` of shape ``(batch, *event_shape)``,
``log_prob(z)`` of shape ``(batch,)`` (summed over the event), and draws ``n`` samples of
shape ``(n, *event_shape)`` by ``rsample(n)`` (reparameterised) or ``sample_and_log_prob(n)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.nn.mlp import MLP

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sum_event(values: Tensor, event_dims: int) -> Tensor:
    """Sum the last ``event_dims`` dimensions: ``(batch, *event) -> (batch,)``."""
    return values.flatten(-event_dims).sum(-1) if event_dims else values


class BaseDistribution(nn.Module, ABC):
    """A distribution over events of a fixed shape.

    Subclasses hold a tensor ``loc`` of the event shape (a buffer or a parameter); its dtype
    and device are those of the samples.
    """

    loc: Tensor

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.event_shape = torch.Size(shape)

    def _randn(self, n: int) -> Tensor:
        return torch.randn((n, *self.event_shape), dtype=self.loc.dtype, device=self.loc.device)

    @abstractmethod
    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``log q(z)``: ``(batch, *event_shape) -> (batch,)``."""

    @abstractmethod
    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` reparameterised samples: ``(n, *event_shape)``."""

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` reparameterised samples and their log-density: ``(n, *event), (n,)``."""
        z = self.rsample(n, context)
        return z, self.log_prob(z, context)

    def location(self, context: Tensor | None = None) -> Tensor:
        """The centre that temperature scales about: ``loc``, or ``(batch, *event_shape)``
        for a base whose location depends on the context."""
        return self.loc

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(z, context)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


class StandardNormal(BaseDistribution):
    r"""$\mathcal N(0, I)$: $\log q(z) = -\tfrac12\|z\|^2 - \tfrac D2 \log 2\pi$."""

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__(event_shape)
        self.register_buffer("loc", torch.zeros(self.event_shape), persistent=False)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return sum_event(-0.5 * z * z - LOG_SQRT_2PI, len(self.event_shape))

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self._randn(n)


class StandardLogistic(BaseDistribution):
    r"""The standard logistic distribution in every coordinate (NICE's prior for MNIST).

    $$
    \log q(z) = -\textstyle\sum_i \mathrm{softplus}(z_i) + \mathrm{softplus}(-z_i)
    $$

    which equals $-\sum_i (|z_i| + 2\log(1 + e^{-|z_i|}))$ and stays finite and exact for
    ``|z|`` in the hundreds and beyond. Samples are $\mathrm{logit}(u)$,
    $u \sim U(0, 1)$.
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__(event_shape)
        self.register_buffer("loc", torch.zeros(self.event_shape), persistent=False)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return sum_event(-F.softplus(z) - F.softplus(-z), len(self.event_shape))

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        u = torch.rand((n, *self.event_shape), dtype=self.loc.dtype, device=self.loc.device)
        return torch.logit(u.clamp_(min=torch.finfo(u.dtype).tiny))


class DiagNormal(BaseDistribution):
    r"""A Gaussian with learnable mean $\mu$ and log-scale $\ell$ (for VI).

    $$
    z = \mu + e^{\ell} \odot \epsilon,\ \epsilon \sim \mathcal N(0, I), \qquad
    \log q(z) = \textstyle\sum_i -\tfrac12 \epsilon_i^2 - \ell_i - \tfrac12\log 2\pi
    $$

    Initialised to $\mathcal N(0, I)$.
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _log_prob_of_noise(self, eps: Tensor) -> Tensor:
        return sum_event(-0.5 * eps * eps - self.log_scale - LOG_SQRT_2PI, len(self.event_shape))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self._log_prob_of_noise((z - self.loc) * torch.exp(-self.log_scale))

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self.loc + self.log_scale.exp() * self._randn(n)

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eps = self._randn(n)
        return self.loc + self.log_scale.exp() * eps, self._log_prob_of_noise(eps)


class ConditionalDiagNormal(BaseDistribution):
    r"""A diagonal Gaussian whose mean and log-scale a network computes from the context.

    $$
    (\mu, \ell) = g(c),\quad z = \mu + e^{\ell} \odot \epsilon,\qquad
    \log q(z \mid c) = \textstyle\sum_i -\tfrac12 \epsilon_i^2 - \ell_i
    - \tfrac12\log 2\pi
    $$

    ``g`` is an `MLP` whose last layer starts at zero, so the base starts
    as $\mathcal N(0, I)$ for every context. A conditional flow with this base is exact
    for a Gaussian $p(x \mid c)$ with diagonal covariance even before its transform
    learns anything. ``loc`` (zeros) only carries the dtype and device.

    Shapes: ``z`` ``(batch, *event_shape)``, context ``(batch, context_dim)``.
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        context_dim: int,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(
                f"a conditional base needs a context width context_dim >= 1, got {context_dim!r}"
            )
        super().__init__(event_shape)
        self.context_dim = context_dim
        self.register_buffer("loc", torch.zeros(self.event_shape), persistent=False)
        size = self.loc.numel()
        self.net = MLP(context_dim, 2 * size, hidden, activation)

    def _loc_log_scale(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None or context.shape[-1:] != (self.context_dim,):
            got = "none" if context is None else tuple(context.shape)
            raise ValueError(
                f"this base is conditional: expected context of shape (batch, "
                f"{self.context_dim}), got {got}"
            )
        loc, log_scale = self.net(context).chunk(2, dim=-1)
        shape = (context.shape[0], *self.event_shape)
        return loc.reshape(shape), log_scale.reshape(shape)

    def location(self, context: Tensor | None = None) -> Tensor:
        return self._loc_log_scale(context)[0]

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        loc, log_scale = self._loc_log_scale(context)
        eps = (z - loc) * torch.exp(-log_scale)
        return sum_event(-0.5 * eps * eps - log_scale - LOG_SQRT_2PI, len(self.event_shape))

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self.sample_and_log_prob(n, context)[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples, one per context row (``context`` is ``(n, context_dim)``)."""
        loc, log_scale = self._loc_log_scale(context)
        eps = self._randn(n)
        log_q = sum_event(-0.5 * eps * eps - log_scale - LOG_SQRT_2PI, len(self.event_shape))
        return loc + log_scale.exp() * eps, log_q

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, context_dim={self.context_dim}"


class TorchBase(BaseDistribution):
    r"""Any ``torch.distributions.Distribution`` over vectors as a flow's base: a Student-t,
    a mixture, a Gaussian fitted to the data. ``log_prob(z)`` and ``rsample(n)`` are the
    distribution's (``sample`` where it has no reparameterised draws); the ``D``
    independent univariate distributions of a batch shape ``(D,)`` become one over vectors
    (``Independent``). Its tensors stay where they were made: ``z`` goes to their dtype and
    device and the result comes back, so build it in the flow's dtype (float64 for a
    float64 flow). A distribution that is an ``nn.Module`` (a `Flow`) is a submodule, and
    trains with the flow.

    Examples:
        >>> from torch.distributions import StudentT
        >>> base = TorchBase(StudentT(4.0, torch.zeros(3), torch.ones(3)))
        >>> base.event_shape, base.log_prob(torch.zeros(5, 3)).shape
        (torch.Size([3]), torch.Size([5]))
    """

    def __init__(self, distribution: torch.distributions.Distribution) -> None:
        if not isinstance(distribution, torch.distributions.Distribution):
            raise TypeError(
                f"expected a torch.distributions.Distribution, got {type(distribution).__name__}"
            )
        if not distribution.event_shape and len(distribution.batch_shape) == 1:
            distribution = torch.distributions.Independent(distribution, 1)
        if len(distribution.event_shape) != 1 or distribution.batch_shape:
            raise ValueError(
                f"a flow's base must be a distribution over vectors: event shape (D,) and no "
                f"batch shape, got event shape {tuple(distribution.event_shape)} and batch "
                f"shape {tuple(distribution.batch_shape)}"
            )
        super().__init__(distribution.event_shape)
        self.distribution = distribution
        draw = distribution.sample()
        try:
            centre = distribution.mean.to(draw.dtype)
        except NotImplementedError:  # e.g. a mixture family without one
            centre = torch.zeros_like(draw)
        centre = torch.where(torch.isfinite(centre), centre, torch.zeros_like(centre))
        self.register_buffer("loc", centre)  # the samples' dtype and device; the centre
        self.native = {"dtype": draw.dtype, "device": draw.device}  # where it computes

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.distribution.log_prob(z.to(**self.native)).to(z.dtype)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        distribution = self.distribution
        draw = distribution.rsample if distribution.has_rsample else distribution.sample
        return draw((n,)).to(self.loc.device, self.loc.dtype)

    def extra_repr(self) -> str:
        return f"{self.distribution}"


BASES: dict[str, type[BaseDistribution]] = {
    "normal": StandardNormal,
    "logistic": StandardLogistic,
    "diag-normal": DiagNormal,
    "conditional-normal": ConditionalDiagNormal,
}


def make_base(
    name: str | BaseDistribution | torch.distributions.Distribution,
    event_shape: int | Sequence[int],
    context_dim: int = 0,
) -> BaseDistribution:
    """A base distribution from its name (``"normal"``, ``"logistic"``, ``"diag-normal"``,
    ``"conditional-normal"``, which needs ``context_dim``), or a torch distribution over
    vectors (`TorchBase`)."""
    if isinstance(name, BaseDistribution):
        return name
    if isinstance(name, torch.distributions.Distribution):
        return TorchBase(name)
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; expected one of {sorted(BASES)}")
    if name == "conditional-normal":
        return ConditionalDiagNormal(event_shape, context_dim)
    return BASES[name](event_shape)
