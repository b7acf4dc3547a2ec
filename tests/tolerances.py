"""Float tolerances from the dtype and the size of a computation, never from one CPU's results.

Two evaluations of the same exact function (one pass or ``D`` passes, a split or a masked
coupling, another CPU's blocked matrix products and vectorised ``exp``) differ only by
rounding. With unit roundoff ``u = eps / 2``, a chain of ``n`` floating operations has a
relative forward error of at most ``gamma_n = n u / (1 - n u)`` (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1); errors made early in the chain are
carried to the result by the map's derivative, so ``growth`` (a bound on the norm of the
Jacobian of what follows, measured by autograd in the test) multiplies it. Each evaluation
lies within that of the exact value, so the two lie within twice it of each other. These
bounds are worst cases: what a CPU gives sits far inside them, whichever CPU it is, while a
bug (a wrong mask, a missed term) gives errors of order one.

The suite is checked with the kernels that other x86 CPUs would use (each run passes):

    OMP_NUM_THREADS=1 python -m pytest
    OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        ONEDNN_MAX_CPU_ISA=AVX2 python -m pytest
    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
        ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE python -m pytest
"""

from __future__ import annotations

import torch


def rounding_bound(dtype: torch.dtype, operations: int, growth: float = 1.0) -> float:
    """``2 * growth * gamma_n`` for ``n = operations`` in ``dtype``: a bound on the relative
    difference of two evaluations of one exact computation by different kernels."""
    u = torch.finfo(dtype).eps / 2
    n = max(int(operations), 1)
    if n * u >= 0.5:
        raise ValueError(f"{n} operations exhaust the precision of {dtype}")
    return 2.0 * max(float(growth), 1.0) * n * u / (1.0 - n * u)


def mlp_operations(*fan_ins: int) -> int:
    """Operations on one output's dependency chain through dense layers of these fan-ins: a
    multiply and an add per input, then the bias and the activation."""
    return sum(2 * width + 2 for width in fan_ins)


def made_operations(features: int, hidden: tuple[int, ...], context_dim: int = 0) -> int:
    """:func:`mlp_operations` of a MADE, counting two layers per hidden width (a residual
    MADE's blocks), so that the count bounds either form."""
    return 2 * mlp_operations(features + context_dim, *hidden)


def inf_norm_of_jacobian(function, x: torch.Tensor) -> float:
    """``max_b ||d function(x)_b / d x_b||_inf`` for a map of independent rows ``(B, D)``: the
    largest factor by which it can carry an error in a row's input to that row's output."""
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v).sum(0), x)  # (D, B, D)
    return jacobian.abs().sum(2).amax().item()
