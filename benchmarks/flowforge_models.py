"""flowforge's model for each benchmark case (the peers build the same in peers.py)."""

from __future__ import annotations

import torch

import flowforge as ff

from .harness import Subject, count_parameters

# case -> (what it is, batch shape for a training step, samples per sampling call)
CASES = {
    "A": ("Real NVP, 8 affine couplings of 2x64, 2-D", (512, 2), 1024),
    "B": ("NICE, 4 additive couplings of 5x1000, 784-D", (256, 784), 1024),
    "C": ("MAF, 5 MADE layers of 2x256, 64-D", (512, 64), 1024),
    "D": ("RQ spline coupling, 4 layers, 8 bins, B=5, 2x128, 16-D", (512, 16), 1024),
    "E": ("reverse KL, planar K=32 on U1, batch 1000", None, 1000),
    "F": ("Glow, 3 levels x 8 steps, 64 channels, 1x32x32, batch 64", (64, 1, 32, 32), 64),
}


def vector_flow(case: str, dim: int, **options) -> ff.Flow:
    """The architecture of case A (Real NVP), C (MAF) or D (NSF) for ``dim``-D vectors;
    ``options`` go to the model's builder (``scale_bound=1.0``, say)."""
    if case == "A":
        return ff.models.realnvp(dim, layers=8, hidden=(64, 64), **options)
    if case == "C":
        return ff.models.maf(dim, layers=5, hidden=(256, 256), **options)
    if case == "D":
        return ff.models.nsf(dim, layers=4, bins=8, tail_bound=5.0, hidden=(128, 128), **options)
    raise ValueError(f"case {case!r} is not a vector flow; expected A, C or D")


def build(case: str, dim: int | None = None, **options) -> Subject:
    """flowforge's subject for ``case``; for A, C and D at ``dim`` if given (the quality
    benchmark's models), else at the case's own dimension, with ``options`` for
    :func:`vector_flow`."""
    if options and case not in ("A", "C", "D"):
        raise ValueError(f"options are for the vector flows A, C and D, not case {case!r}")
    if case == "E":
        flow = ff.models.planar(2, 32, base="diag-normal")
        target = ff.targets.get("u1")

        def loss(_: torch.Tensor | None) -> torch.Tensor:
            z, log_q = flow.sample_and_log_prob(1000)
            return (log_q - target.log_prob(z)).mean()

    else:
        if case == "B":
            flow = ff.models.nice(784, layers=4, hidden=(1000,) * 5)
        elif case == "F":
            flow = ff.models.glow((1, 32, 32), levels=3, steps=8, channels=64)
        else:
            flow = vector_flow(case, CASES[case][1][1] if dim is None else dim, **options)
        flow.validate_args = False  # the NaN check's synchronisation is not the model's work

        def loss(batch: torch.Tensor | None) -> torch.Tensor:
            return -flow.log_prob(batch).mean()

    return Subject("flowforge", case, flow, loss, flow.sample, count_parameters(flow))


def batch(case: str, seed: int = 0) -> torch.Tensor | None:
    """The training batch of ``case``: standard-normal vectors, or images in (0, 1)."""
    shape = CASES[case][1]
    if shape is None:
        return None
    generator = torch.Generator().manual_seed(seed)
    if len(shape) == 4:
        return torch.rand(shape, generator=generator).clamp(0.01, 0.99)
    return torch.randn(shape, generator=generator)


def conditioner_weights(flow: torch.nn.Module) -> int:
    """Weight entries of the conditioners' linear layers (no biases): the matmul work."""
    return sum(m.weight.numel() for m in flow.modules() if isinstance(m, torch.nn.Linear))
