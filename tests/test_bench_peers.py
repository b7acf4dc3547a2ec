"""The benchmark's peer models (benchmarks/peers.py): each builds, trains, samples, and has
flowforge's parameter count or a note saying why not. A peer library that is not installed
is skipped."""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

import flowforge as ff

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))
peers = importlib.import_module("benchmarks.peers")

EVENT = {"A": (2,), "B": (784,), "C": (64,), "D": (16,), "E": (2,), "F": (1, 32, 32)}
UNSUPPORTED = {("nflows", "E"), ("zuko", "E"), ("zuko", "F"), ("pyro", "F")}
SUPPORTED = [
    (library, case)
    for library in peers.LIBRARIES
    for case in peers.CASES
    if (library, case) not in UNSUPPORTED
]
FLOWFORGE = {
    "A": lambda: ff.models.realnvp(dim=2, layers=8, hidden=(64, 64)),
    "C": lambda: ff.models.maf(64, layers=5, hidden=(256, 256)),
    "D": lambda: ff.models.nsf(16, layers=4, bins=8, tail_bound=5.0, hidden=(128, 128)),
}


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def small_batch(case: str) -> torch.Tensor | None:
    if case == "E":
        return None
    if case == "F":
        return torch.rand(2, *EVENT[case]).clamp(0.01, 0.99)
    return torch.randn(8, *EVENT[case])


def log_density(library: str, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each library's own per-point log-density of its model."""
    return module().log_prob(x) if library == "zuko" else module.log_prob(x)


@pytest.mark.parametrize(("library", "case"), SUPPORTED)
def test_subject_trains_and_samples(library, case):
    pytest.importorskip(library)
    subject = peers.build(library, case)
    assert (subject.library, subject.case) == (library, case)
    assert subject.parameters == trainable(subject.module)
    loss = subject.loss(small_batch(case))
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in subject.module.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
    with torch.no_grad():
        x = subject.sample(8)
    assert x.shape == (8, *EVENT[case])
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("library", peers.LIBRARIES)
@pytest.mark.parametrize("case", sorted(FLOWFORGE))
def test_parameter_count_matches_flowforge_or_is_explained(library, case):
    pytest.importorskip(library)
    subject = peers.build(library, case)
    reference = trainable(FLOWFORGE[case]())
    if abs(subject.parameters - reference) > 0.05 * reference:
        assert subject.note, f"{library} {case}: {subject.parameters} vs {reference}, no note"


@pytest.mark.parametrize(("library", "case"), sorted(UNSUPPORTED))
def test_unsupported_cases_say_why(library, case):
    pytest.importorskip(library)
    with pytest.raises(NotImplementedError, match=r"\w"):
        peers.build(library, case)


@pytest.mark.parametrize("library", peers.LIBRARIES)
def test_realnvp_density_integrates_to_one(library):
    """Case A, with its parameters moved off their initial values: the log-density the loss
    averages is normalised (the layers' directions and log-determinants fit together)."""
    pytest.importorskip(library)
    subject = peers.build(library, "A")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in subject.module.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.add_(0.08 * torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
        grid = torch.linspace(-8.0, 8.0, 321)
        points = torch.cartesian_prod(grid, grid)
        density = log_density(library, subject.module, points).exp()
        mass = float(density.sum()) * float(grid[1] - grid[0]) ** 2
        assert mass == pytest.approx(1.0, abs=0.01)
        # and the loss is the mean negative log-density
        x = points[::997]
        expected = -log_density(library, subject.module, x).mean()
        assert float(subject.loss(x)) == pytest.approx(float(expected), rel=1e-5, abs=1e-5)


def test_libraries_and_cases_are_checked():
    assert isinstance(peers.available("zuko"), bool)
    with pytest.raises(ValueError, match="unknown library"):
        peers.available("tensorflow_probability")
    with pytest.raises(ValueError, match="unknown case"):
        peers.build(peers.LIBRARIES[0], "Z")
