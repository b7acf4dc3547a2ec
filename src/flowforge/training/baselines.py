"""Reference models printed beside a flow's number, to show whether it learned anything."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from flowforge.datasets.base import Split


class GaussianBaseline:
    r"""A full-covariance Gaussian fitted by maximum likelihood to the training data:

    $$
    \hat\mu = \bar x, \qquad \hat\Sigma = \frac1N \sum_i (x_i - \bar x)(x_i - \bar x)^\top
    + \epsilon I
    $$

    in float64, on flattened (and, for discrete data, dequantised) samples. ``eps`` keeps
    $\hat\Sigma$ invertible when a feature is constant. ``log_prob`` takes samples of the
    data's event shape.
    """

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, train: Split | Tensor, eps: float = 1e-6, seed: int = 0) -> None:
        split = train if isinstance(train, Split) else Split(train)
        generator = torch.Generator().manual_seed(seed)
        x = split.dequantize(split.x, generator).reshape(len(split), -1).double()
        mean = x.mean(0)
        centred = x - mean
        covariance = centred.T @ centred / len(split) + eps * torch.eye(x.shape[1]).double()
        self.event_shape = split.event_shape
        self.distribution = MultivariateNormal(mean, covariance_matrix=covariance)

    def log_prob(self, x: Tensor) -> Tensor:
        """``(N, *event_shape) -> (N,)``, nats."""
        return self.distribution.log_prob(x.reshape(x.shape[0], -1).double())


class LinearGaussianBaseline:
    r"""A conditional reference model for data with a context: a Gaussian whose mean is
    linear in the context, $x \mid c \sim N(A c + b, \Sigma)$, fitted by maximum
    likelihood (least squares for ``A, b``; $\Sigma$ the residuals' covariance
    plus ``eps`` I) to the training pairs, in float64. A flow ``q(x | c)`` should beat it
    where ``x`` depends on ``c`` other than linearly or its noise is not Gaussian."""

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, train: Split, eps: float = 1e-6) -> None:
        if train.context is None:
            raise ValueError("LinearGaussianBaseline needs training data with a context")
        x = train.x.reshape(len(train), -1).double()
        self.coefficients = torch.linalg.lstsq(self._design(train.context), x).solution
        residuals = x - self._design(train.context) @ self.coefficients
        covariance = residuals.T @ residuals / len(x) + eps * torch.eye(x.shape[1]).double()
        self.scale_tril = torch.linalg.cholesky(covariance)

    @staticmethod
    def _design(context: Tensor) -> Tensor:
        context = context.reshape(len(context), -1).double().cpu()
        return torch.cat([context, torch.ones(len(context), 1, dtype=torch.float64)], dim=1)

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        """``(N, *event_shape), (N, k) -> (N,)``, nats."""
        mean = self._design(context) @ self.coefficients
        normal = MultivariateNormal(mean, scale_tril=self.scale_tril)
        return normal.log_prob(x.reshape(len(x), -1).double().cpu())
