r"""Autoregressive transforms on a MADE: MAF layers (Papamakarios et al. 2017) and, inverted,
IAF layers (Kingma et al. 2016).

Feature ``i`` is transformed elementwise with parameters that a `MADE`
computes from the features before it in the ordering (and the context):

$$
z_i = g(x_i;\ \theta_i(x_{<i}, c)), \qquad
\log|\det \partial z/\partial x| = \textstyle\sum_i \log|g'(x_i)|
$$

The Jacobian is triangular under the ordering. ``forward`` (data to latent) is one MADE pass;
``inverse`` recovers the features one degree at a time: without gradients (sampling) by
`autoregress()`, which computes each hidden unit once, as soon as
its inputs are known (about one pass of arithmetic); with gradients by ``D`` full passes,
each fixing one more feature, a loop of static length with no branch on the data. A MAF
layer uses this class as it is (density in one pass, sampling by the inverse); an IAF layer
is its `Inverse` (sampling with its density in one pass).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.nn.made import MADE
from flowforge.transforms.base import Transform
from flowforge.transforms.coupling import bounded_affine, check_bound, check_context, with_context


class Autoregressive(Transform):
    r"""Base class: a MADE conditioner and an elementwise map per feature.

    Subclasses set ``params_per_feature`` and implement `transform_part()` and
    `untransform_part()` on ``(batch, D)`` given the MADE output ``(batch, D, P)``.

    Args:
        features: ``D``.
        hidden: hidden widths of the MADE.
        context_dim: width of the optional context.
        order: the autoregressive ordering: ``"natural"``, ``"reverse"``, ``"random"`` or a
            list of feature indices.
        residual: residual connections in the MADE.
        activation: activation of the MADE.
        seed: for ``order="random"``.
    """

    params_per_feature: int

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: str | Sequence[int] = "natural",
        residual: bool = False,
        activation: str | Callable[[], nn.Module] = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.features, self.context_dim = features, context_dim
        self.made = MADE(
            features,
            self.params_per_feature,
            hidden,
            context_dim,
            order,
            residual,
            activation,
            seed,
        )

    def _parameters_from(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.made(with_context(x, context, self.context_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform_part(x, self._parameters_from(x, context))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not torch.is_grad_enabled():
            return self._inverse_in_one_pass(z, context)
        # With gradients: D full passes. After pass k the first k features in the ordering
        # are exact, so the last pass's parameters, and the log-determinant from them, are
        # those of the exact x.
        x = torch.zeros_like(z)
        for _ in range(self.features):
            x, logdet = self.untransform_part(z, self._parameters_from(x, context))
        return x, logdet

    def _inverse_in_one_pass(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The inverse by `MADE.autoregress()`: each hidden unit computed once."""
        if self.context_dim:
            context = check_context(context, z.shape[0], self.context_dim)
        logdets: list[Tensor] = []
        columns = z.T.contiguous()

        def solve(feature: int, params: Tensor, out: Tensor) -> None:
            logdets.append(self.untransform_feature(columns[feature], params, out))

        x = self.made.autoregress(context if self.context_dim else None, solve, z)
        return x, torch.stack(logdets).sum(0)

    def untransform_feature(self, z_i: Tensor, params: Tensor, out: Tensor) -> Tensor:
        """One feature of `untransform_part()`: ``x_i`` written into ``out`` ``(batch,)``
        from ``z_i`` ``(batch,)`` and its parameters ``(P, batch)`` (which it may overwrite);
        returns ``log|dx_i/dz_i|`` ``(batch,)``."""
        x_i, logdet = self.untransform_part(z_i[:, None], params.T[:, None])
        out.copy_(x_i[:, 0])
        return logdet

    @abstractmethod
    def transform_part(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, theta) -> (z, sum log|dz/dx|)``."""

    @abstractmethod
    def untransform_part(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, theta) -> (x, sum log|dx/dz|)``."""


class AffineAutoregressive(Autoregressive):
    r"""The MAF layer: $z_i = x_i e^{s_i} + t_i$, with
    $(\hat s_i, t_i) = \theta_i(x_{<i}, c)$ and $s_i = B\tanh(\hat s_i / B)$, so
    $\log|\det J| = \sum_i s_i$ (see `AffineCoupling` for the bound).

    Args:
        features: ``D``.
        scale_bound: ``B``, the largest log-scale (default 3).
        **kwargs: see `Autoregressive`.
    """

    params_per_feature = 2

    def __init__(self, features: int, *, scale_bound: float = 3.0, **kwargs: Any) -> None:
        check_bound("scale_bound", scale_bound)
        super().__init__(features, **kwargs)
        self.scale_bound = scale_bound

    def transform_part(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return bounded_affine(x, *params.unbind(-1), self.scale_bound)

    def untransform_part(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return bounded_affine(z, *params.unbind(-1), self.scale_bound, inverse=True)

    def untransform_feature(self, z_i: Tensor, params: Tensor, out: Tensor) -> Tensor:
        raw_scale, shift = params
        log_scale = raw_scale.div_(self.scale_bound).tanh_().mul_(self.scale_bound)
        torch.sub(z_i, shift, out=out).mul_(torch.exp(-log_scale))
        return log_scale.neg_()

    def extra_repr(self) -> str:
        return f"features={self.features}, scale_bound={self.scale_bound}"
