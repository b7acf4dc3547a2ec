"""fit(precision="bf16"): the networks' products in bfloat16, the rest in float32 (issue 39)."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.cli import main
from flowforge.training.objectives import Likelihood, ObjectiveLoss
from flowforge.training.precision import Bf16Products

UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 bits of significand


def trained_realnvp() -> tuple[ff.Flow, ff.datasets.Dataset]:
    torch.manual_seed(0)
    data = ff.datasets.load("two-moons", n=3000)
    flow = ff.models.realnvp(dim=2, layers=4, hidden=(64, 64))
    ff.fit(flow, data.train, epochs=3, lr=3e-3, progress=False)
    return flow, data


def test_the_bf16_loss_agrees_with_float32_to_bf16s_precision():
    """Each of the flow's L linear layers rounds its inputs to bf16 (relative error u
    each, so about 2u on a product): a sample's NLL moves by at most about 2uL(1 + |NLL|),
    and it does move (the products are bf16)."""
    flow, data = trained_realnvp()
    x = data.test.x[:1024]
    loss = ObjectiveLoss(Likelihood(), flow)
    exact = loss(x, None)
    low = Bf16Products(loss, "cpu")
    rounded = low(x, None)
    low.remove()
    layers = sum(isinstance(m, torch.nn.Linear) for m in flow.modules())
    bound = 2 * UNIT_ROUNDOFF * layers * (1 + exact.abs())
    assert rounded.dtype == torch.float32 and (rounded != exact).any()
    assert ((rounded - exact).abs() < bound).all(), (rounded - exact).abs().max()
    assert torch.equal(loss(x, None), exact)  # the hooks are gone: float32 again


def test_bf16_training_converges_like_float32():
    """Two moons, the same seeds: bf16 ends within 0.05 nats of float32's validation NLL
    (about the spread of float32 runs over seeds at this budget)."""
    data = ff.datasets.load("two-moons", n=6000)
    results = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(0)
        flow = ff.models.realnvp(dim=2, layers=4, hidden=(64, 64))
        history = ff.fit(
            flow, data.train, data.val, epochs=8, lr=3e-3, precision=precision, progress=False
        )
        assert history.epochs[-1]["val_nll"] < history.epochs[0]["val_nll"]
        assert not any(m._forward_hooks for m in flow.modules())
        results[precision] = ff.evaluate(flow, data.test).nll
    assert math.isfinite(results["bf16"])
    assert abs(results["bf16"] - results["float32"]) < 0.05, results


@pytest.mark.parametrize(
    ("dtype", "precision", "message"),
    [
        (torch.float64, "bf16", "this flow is float64"),
        (torch.float32, "fp16", r"precision must be 'float32' or 'bf16'"),
    ],
)
def test_bad_precisions_are_one_line_errors(dtype, precision, message):
    flow = ff.models.realnvp(dim=2, layers=2).to(dtype)
    with pytest.raises(ValueError, match=message) as caught:
        ff.fit(flow, torch.randn(64, 2, dtype=dtype), epochs=1, precision=precision, progress=False)
    assert "\n" not in str(caught.value)


def test_the_command_line_trains_in_bf16(tmp_path):
    out = tmp_path / "run"
    arguments = ["fit", "--data", "two-moons", "--n-samples", "600", "--epochs", "1"]
    arguments += ["--layers", "2", "--precision", "bf16", "--no-plots", "--out", str(out)]
    assert main([*arguments, "--no-progress"]) == 0
    assert "precision: bf16" in (out / "config.yaml").read_text()
