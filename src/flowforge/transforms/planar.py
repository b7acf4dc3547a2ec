"""Planar flow (Rezende & Mohamed 2015, section 4.1), invertible at any point."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.transforms.base import Transform


class Planar(Transform):
    r"""The planar map, in the paper's generative direction:

    $$
    f(z) = z + \hat u \tanh(w^\top z + b), \qquad
    \log|\det \partial f/\partial z| = \log\big(1 + (1 - \tanh^2(w^\top z + b))\,
    w^\top\hat u\big)
    $$

    with $\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2$ and
    $m(a) = -1 + \mathrm{softplus}(a)$, which makes $w^\top \hat u > -1$ and so
    ``f`` invertible (appendix A of the paper).

    ``forward`` is ``f`` (closed form). ``inverse`` is exact too: writing $a = w^\top z + b$,
    the projection of $x = f(z)$ on ``w`` gives the scalar equation
    $a + c \tanh a = w^\top x + b$ with $c = w^\top\hat u > -1$, strictly increasing
    in ``a``. Its root lies in $[y - |c|, y + |c|]$ and is found by Newton's method kept
    inside that bracket (a bisection step whenever Newton would leave it), to float precision;
    then $z = x - \hat u \tanh a$. Gradients flow through one final Newton step, which
    gives the exact implicit derivative.

    In a `Flow`, planar layers map latent to data, so the model builder uses
    their inverse as its data -> latent transform (see `flowforge.flows.models.planar()`).

    Initialisation: ``w`` uniform in $[-1/\sqrt D, 1/\sqrt D]^D$, and ``u`` with
    $w^\top u$ near $\log(e - 1)$, where $m(w^\top u) = w^\top u$, so that
    $\hat u$ is small noise: each fresh layer is close to the identity (a slight shear),
    and a stack of 32 neither collapses nor inflates the base.

    Args:
        dim: number of features ``D``; shapes ``(batch, D)``.
        max_iter: iteration cap of the inverse's root finding.
    """

    def __init__(self, dim: int, max_iter: int = 100) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        w = torch.empty(dim).uniform_(-bound, bound)
        u = math.log(math.e - 1) * w / (w @ w) + 0.1 * bound * torch.randn(dim)
        self.u = nn.Parameter(u)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(()))
        self.max_iter = max_iter

    def u_hat(self) -> tuple[Tensor, Tensor]:
        r"""$\hat u$, and $1 + w^\top\hat u = \mathrm{softplus}(w^\top u) > 0$."""
        wu = self.w @ self.u
        one_plus_c = F.softplus(wu)
        return self.u + (one_plus_c - 1 - wu) * self.w / (self.w @ self.w), one_plus_c

    @staticmethod
    def _logdet(h: Tensor, one_plus_c: Tensor) -> Tensor:
        # log(1 + (1 - h^2) c), written as log(h^2 + (1 - h^2)(1 + c)): no cancellation when
        # c is close to -1, where 1 + c would round to 0.
        h2 = h * h
        return torch.log(h2 + (1 - h2) * one_plus_c)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, one_plus_c = self.u_hat()
        h = torch.tanh(z @ self.w + self.b)
        return z + h.unsqueeze(-1) * u, self._logdet(h, one_plus_c)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, one_plus_c = self.u_hat()
        c = one_plus_c - 1
        y = x @ self.w + self.b
        with torch.no_grad():
            a = solve_monotone_tanh(y, c, self.max_iter)
        # One Newton step from the root: same value, exact implicit gradient.
        h = torch.tanh(a)
        a = a - (a + c * h - y) / (1 + c * (1 - h * h))
        h = torch.tanh(a)
        return x - h.unsqueeze(-1) * u, -self._logdet(h, one_plus_c)


def solve_monotone_tanh(y: Tensor, c: Tensor, max_iter: int = 100) -> Tensor:
    r"""Solve $a + c \tanh a = y$ elementwise for ``a``, given $c > -1$.

    The left side is strictly increasing (its derivative $1 + c(1 - \tanh^2 a)$ is at
    least $\min(1, 1 + c) > 0$), and $|a - y| \le |c|$. Newton's method runs inside
    that bracket, with a bisection step instead whenever Newton would leave the bracket or
    does not at least halve the step before last (the safeguard of Numerical Recipes'
    ``rtsafe``, which stops Newton's 2-cycles on the flat parts of ``tanh``), until the step is
    at the dtype's resolution. Shapes: ``y`` is ``(batch,)``, ``c`` a scalar tensor.
    """
    lo, hi = y - c.abs(), y + c.abs()
    a = y.clone()
    step = older_step = hi - lo
    tol = 4 * torch.finfo(y.dtype).eps
    for _ in range(max_iter):
        t = torch.tanh(a)
        g = a + c * t - y
        above = g > 0
        hi = torch.where(above, a, hi)
        lo = torch.where(above, lo, a)
        newton_step = g / (1 + c * (1 - t * t))
        newton = a - newton_step
        use_newton = (newton >= lo) & (newton <= hi) & (2 * newton_step.abs() <= older_step)
        new = torch.where(use_newton, newton, 0.5 * (lo + hi))
        older_step, step = step, (new - a).abs()
        a = new
        if bool((step <= tol * (1 + a.abs())).all()):
            break
    return a
