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

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(z, context)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


class StandardNormal(BaseDistribution):
    r""":math:`\mathcal N(0, I)`: :math:`\log q(z) = -\tfrac12\|z\|^2 - \tfrac D2 \log 2\pi`."""

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__(event_shape)
        self.register_buffer("loc", torch.zeros(self.event_shape), persistent=False)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return sum_event(-0.5 * z * z - LOG_SQRT_2PI, len(self.event_shape))

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self._randn(n)


class StandardLogistic(BaseDistribution):
    r"""The standard logistic distribution in every coordinate (NICE's prior for MNIST).

    .. math::
        \log q(z) = -\textstyle\sum_i \mathrm{softplus}(z_i) + \mathrm{softplus}(-z_i)

    which equals :math:`-\sum_i (|z_i| + 2\log(1 + e^{-|z_i|}))` and stays finite and exact for
    ``|z|`` in the hundreds and beyond. Samples are :math:`\mathrm{logit}(u)`,
    :math:`u \sim U(0, 1)`.
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
    r"""A Gaussian with learnable mean :math:`\mu` and log-scale :math:`\ell` (for VI).

    .. math:: z = \mu + e^{\ell} \odot \epsilon,\ \epsilon \sim \mathcal N(0, I), \qquad
              \log q(z) = \textstyle\sum_i -\tfrac12 \epsilon_i^2 - \ell_i - \tfrac12\log 2\pi

    Initialised to :math:`\mathcal N(0, I)`.
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


BASES: dict[str, type[BaseDistribution]] = {
    "normal": StandardNormal,
    "logistic": StandardLogistic,
    "diag-normal": DiagNormal,
}


def make_base(name: str | BaseDistribution, event_shape: int | Sequence[int]) -> BaseDistribution:
    """A base distribution from its name (``"normal"``, ``"logistic"``, ``"diag-normal"``)."""
    if isinstance(name, BaseDistribution):
        return name
    try:
        return BASES[name](event_shape)
    except KeyError:
        raise ValueError(f"unknown base {name!r}; expected one of {sorted(BASES)}") from None
