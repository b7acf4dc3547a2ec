r"""Any flowforge transform as a ``torch.distributions.Transform``, for
``TransformedDistribution`` and the rest of torch's (and Pyro's) distribution tooling.

A flowforge transform maps data to latent, $z = f(x)$; a ``TransformedDistribution`` pushes a
base forward, so the adapter is the generative direction, $x = f^{-1}(z)$:

$$
\texttt{adapter}(z) = f^{-1}(z), \qquad
\texttt{log\_abs\_det\_jacobian}(z, x) = \log\lvert\det \partial f^{-1}/\partial z\rvert
= -\log\lvert\det \partial f/\partial x\rvert .
$$

The log-determinant comes from the same pass as the map: the adapter keeps the last pass's,
and `log_abs_det_jacobian` returns it when it is asked about that pass's tensors (else it
computes it). Leading batch dimensions of any number are flattened for the transform and
restored after.

Examples:
    >>> import torch
    >>> from torch.distributions import Independent, Normal, TransformedDistribution
    >>> import flowforge as ff
    >>> flow = ff.models.realnvp(dim=2, layers=2)
    >>> base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    >>> q = TransformedDistribution(base, [TorchTransform(flow.transform)])
    >>> x = q.sample((5,))
    >>> torch.allclose(q.log_prob(x), flow.log_prob(x), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

from flowforge.transforms.base import Transform


class TorchTransform(torch.distributions.Transform):
    """``transform``'s generative direction (latent to data) as a torch ``Transform``.

    Args:
        transform: a flowforge `Transform`.
        context: for a conditional transform, the context: ``(k,)`` for every sample, or
            ``(batch, k)`` for a batch of that many rows.
        event_shape: the data's event shape (default: ``transform.event_shape``, else one
            vector dimension).
        latent_shape: the latent's event shape, where the transform changes it (Squeeze).
    """

    bijective = True

    def __init__(
        self,
        transform: Transform,
        context: Tensor | None = None,
        event_shape: Sequence[int] | None = None,
        latent_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(cache_size=0)
        if not isinstance(transform, Transform):
            raise TypeError(f"expected a flowforge Transform, got {type(transform).__name__}")
        self.transform, self.context = transform, context
        if event_shape is None and transform.event_shape is not None:
            event_shape = transform.event_shape
        self.data_shape = None if event_shape is None else torch.Size(event_shape)
        self.latent_shape = self.data_shape if latent_shape is None else torch.Size(latent_shape)
        data_dims = 1 if self.data_shape is None else len(self.data_shape)
        latent_dims = 1 if self.latent_shape is None else len(self.latent_shape)
        self.domain = constraints.independent(constraints.real, latent_dims)
        self.codomain = constraints.independent(constraints.real, data_dims)
        self.last: tuple[Tensor, Tensor, Tensor] | None = None  # (input, output, its logdet)

    def _run(self, value: Tensor, direction: str, event_dims: int) -> tuple[Tensor, Tensor]:
        """The transform's ``direction`` on ``(*batch, *event)``: output and logdet
        ``(*batch,)``."""
        batch = value.shape[: value.dim() - event_dims]
        rows = value.reshape(-1, *value.shape[value.dim() - event_dims :])
        context = self.context
        if context is not None and context.dim() == 1:
            context = context.expand(rows.shape[0], -1)
        output, logdet = getattr(self.transform, direction)(rows, context)
        return output.reshape(*batch, *output.shape[1:]), logdet.reshape(batch)

    def _call(self, z: Tensor) -> Tensor:
        x, logdet = self._run(z, "inverse", self.domain.event_dim)
        self.last = (z, x, logdet)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        z, logdet = self._run(x, "forward", self.codomain.event_dim)
        self.last = (z, x, -logdet)
        return z

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        if self.last is not None and self.last[0] is z and self.last[1] is x:
            return self.last[2]
        return -self._run(x, "forward", self.codomain.event_dim)[1]

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        return self._swap(shape, self.latent_shape, self.data_shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        return self._swap(shape, self.data_shape, self.latent_shape)

    @staticmethod
    def _swap(shape: Sequence[int], old: torch.Size | None, new: torch.Size | None):
        if old is None or new is None:
            return torch.Size(shape)
        return torch.Size((*shape[: len(shape) - len(old)], *new))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchTransform) and other.transform is self.transform

    def __hash__(self) -> int:
        return id(self.transform)


__all__ = ["TorchTransform"]
