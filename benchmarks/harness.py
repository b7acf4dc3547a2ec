"""Timing: interleaved rounds, warm-up, medians and spreads, and the machine's matmul peak.

Every subject of one comparison is timed in the same rounds, one call each per round in a
fixed order, so that a slow moment of a shared machine hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the interquartile range over the rounds."""

    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median

    def as_dict(self) -> dict[str, float]:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "rounds": self.rounds}


def interleaved(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, Timing]:
    """Time each call ``rounds`` times, one call of each per round, after ``warmup`` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                samples[name].append(elapsed)
    result = {}
    for name, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        result[name] = Timing(median, q1, q3, len(values))
    return result


def matmul(size: int = 1024) -> tuple[Callable[[], object], float]:
    """A float32 ``size`` x ``size`` matrix product and its floating-point operations."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    return (lambda: torch.mm(a, b)), 2.0 * size**3


@dataclass
class Subject:
    """One library's model for one benchmark case.

    ``loss(batch)`` is the training objective on a batch (the mean NLL; for the variational
    case ``loss(None)`` draws its own batch); ``sample(n)`` draws ``n`` samples; Adam runs
    over ``module.parameters()``.
    """

    library: str
    case: str
    module: torch.nn.Module
    loss: Callable[[torch.Tensor | None], torch.Tensor]
    sample: Callable[[int], torch.Tensor]
    parameters: int
    note: str = ""


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def training_step(subject: Subject, batch: torch.Tensor | None) -> Callable[[], object]:
    """One step: ``loss(batch)``, backward, Adam (fused, the same for every library)."""
    optimizer = torch.optim.Adam(subject.module.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        subject.loss(batch).backward()
        optimizer.step()

    return step


def sampling_call(subject: Subject, n: int) -> Callable[[], object]:
    def call() -> torch.Tensor:
        with torch.no_grad():
            return subject.sample(n)

    return call
