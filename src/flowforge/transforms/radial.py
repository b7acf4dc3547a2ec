"""Radial flow (Rezende & Mohamed 2015, section 4.1), inverted in closed form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.transforms.base import Transform


class Radial(Transform):
    r"""The radial map around a centre $z_0$, in the paper's generative direction:

    $$
    f(z) = z + \frac{\beta}{\alpha + r}(z - z_0), \qquad r = \|z - z_0\|,

    \log|\det \partial f/\partial z| = (D - 1)\log\Big(1 + \frac{\beta}{\alpha + r}\Big)
    + \log\Big(1 + \frac{\alpha\beta}{(\alpha + r)^2}\Big)
    $$

    with $\alpha = \mathrm{softplus}(\hat\alpha) > 0$ and
    $\beta = -\alpha + \mathrm{softplus}(\hat\beta) > -\alpha$, the paper's condition for
    invertibility.

    ``inverse`` is closed form: with $\rho = \|x - z_0\|$, the radius $r$ solves
    $\rho = r(\alpha + \beta + r)/(\alpha + r)$, i.e. the quadratic
    $r^2 + (\alpha + \beta - \rho) r - \alpha\rho = 0$, whose one non-negative root is
    taken in the form that avoids cancellation; then
    $z = z_0 + (x - z_0) / (1 + \beta/(\alpha + r))$.

    Initialisation: $z_0 \sim \mathcal N(0, I/D)$, $\hat\alpha \sim \mathcal N(0, 1)$
    and $\hat\beta = \hat\alpha + \mathcal N(0, 0.1^2)$, so $\beta$ starts near 0
    and each fresh layer is close to the identity.

    Args:
        dim: number of features ``D``; shapes ``(batch, D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        alpha_raw = torch.randn(())
        self.z0 = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.alpha_raw = nn.Parameter(alpha_raw)
        self.beta_raw = nn.Parameter(alpha_raw + 0.1 * torch.randn(()))

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """The constrained $(\\alpha, \\beta)$."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor, dim: int) -> Tensor:
        h = 1 / (alpha + r)
        return (dim - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._logdet(r, alpha, beta, z.shape[-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        rho = torch.linalg.vector_norm(diff, dim=-1)
        b = alpha + beta - rho
        root = torch.sqrt(b * b + 4 * alpha * rho)
        positive = b > 0
        # Each branch is free of cancellation where it is taken; the unused one must not divide
        # by zero, or its NaN would leak into the gradient.
        stable = 2 * alpha * rho / torch.where(positive, b + root, torch.ones_like(b))
        r = torch.where(positive, stable, 0.5 * (root - b))
        z = self.z0 + diff / (1 + beta / (alpha + r)).unsqueeze(-1)
        return z, -self._logdet(r, alpha, beta, x.shape[-1])
