"""Reference models printed beside a flow's number, to show whether it learned anything."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from .datasets.base import Split


class GaussianBaseline:
    r"""A full-covariance Gaussian fitted by maximum likelihood to the training data:

    .. math:: \hat\mu = \bar x, \qquad \hat\Sigma = \frac1N \sum_i (x_i - \bar x)(x_i - \bar x)^\top
              + \epsilon I

    in float64, on flattened (and, for discrete data, dequantised) samples. ``eps`` keeps
    :math:`\hat\Sigma` invertible when a feature is constant. ``log_prob`` takes samples of the
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
