"""The CUDA path (issues 37 and 39): every transform, fit, bf16 and sampling on one GPU,
against the CPU. Skipped where torch sees no CUDA GPU (CI, the development VM); run on a GPU
machine by ``experiments/gpu_check.sh``. ``FLOWFORGE_TEST_DEVICE=cpu`` runs the same checks
with the CPU in the GPU's place (a dry run of the tests themselves)."""

from __future__ import annotations

import math
import os

import pytest
import torch

import flowforge as ff
from test_transforms import PARAMS, inputs, make

from cases import Case

DEVICE = os.environ.get("FLOWFORGE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
)

# float64 on both devices: the maps agree up to sums in another order (cuBLAS, cuDNN), a few
# hundred units of float64's 2.2e-16 at the suite's sizes; an ODE's map to its solver's error
FLOAT64 = 1e-10


# each case at the first size of the transform suite's
FIRST_SIZES = {}
for param in PARAMS:
    FIRST_SIZES.setdefault(param.values[0].name, param.values)


@pytest.mark.parametrize(("case", "dim"), FIRST_SIZES.values(), ids=list(FIRST_SIZES))
def test_every_transform_gives_the_cpus_map_and_log_determinant(case: Case, dim: int):
    transform = make(case, dim, seed=0)
    x, context = inputs(case, dim, 5, seed=0)
    z_cpu, logdet_cpu = transform(x, context)
    moved = transform.to(DEVICE)
    on = None if context is None else context.to(DEVICE)
    z, logdet = moved(x.to(DEVICE), on)
    tolerance = max(FLOAT64, case.round_trip)
    torch.testing.assert_close(z.cpu(), z_cpu, rtol=0, atol=tolerance)
    torch.testing.assert_close(logdet.cpu(), logdet_cpu, rtol=0, atol=max(FLOAT64, case.logdet))
    x_back, _ = moved.inverse(z, on)
    torch.testing.assert_close(x_back.cpu(), x, rtol=0, atol=tolerance)


def _fit_two_moons(device: str, precision: str = "float32") -> float:
    torch.manual_seed(0)
    data = ff.datasets.load("two-moons", n=6000)
    flow = ff.models.realnvp(dim=2, layers=4, hidden=(64, 64))
    ff.fit(flow, data.train, data.val, epochs=8, lr=3e-3, device=device, precision=precision,
           progress=False)  # fmt: skip
    assert flow.device.type == torch.device(device).type
    return ff.evaluate(flow, data.test).nll


def test_fit_on_cuda_reaches_the_cpus_test_nll():
    """The same seeds train alike up to float32 sums in another order: within 0.05 nats (the
    spread over seeds at this budget, as in test_precision)."""
    cuda, cpu = _fit_two_moons(DEVICE), _fit_two_moons("cpu")
    assert math.isfinite(cuda) and abs(cuda - cpu) < 0.05, (cuda, cpu)


def test_bf16_on_cuda_converges_like_float32():
    bf16, float32 = _fit_two_moons(DEVICE, "bf16"), _fit_two_moons(DEVICE)
    assert math.isfinite(bf16) and abs(bf16 - float32) < 0.05, (bf16, float32)


def test_sampling_on_cuda_matches_log_prob():
    torch.manual_seed(0)
    flow = ff.models.nsf(8, layers=2, hidden=(16,)).double()
    for p in flow.parameters():  # away from the identity
        p.data.add_(0.3 * torch.randn_like(p))
    flow.to(DEVICE)
    x, log_q = flow.sample_and_log_prob(1000)
    assert x.device.type == torch.device(DEVICE).type
    # float64: the splines' round trip (the transform suite's 1e-10 per layer and dimension)
    torch.testing.assert_close(log_q, flow.log_prob(x), rtol=0, atol=1e-8)
