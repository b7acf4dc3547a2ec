"""benchmarks/floor.py records a step's matrix products, replays them, and judges the floor."""

import importlib

import pytest
import torch
from torch import nn

floor = importlib.import_module("benchmarks.floor")
models = importlib.import_module("benchmarks.flowforge_models")
harness = importlib.import_module("benchmarks.harness")


def test_records_every_product_of_a_training_step():
    batch, widths = 32, (5, 7, 3)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(batch, widths[0])
    products = floor.record_products(lambda: net(x).square().sum().backward())
    ops = [p.op for p in products]
    # forward: two addmm; backward: two weight gradients and the second layer's input
    # gradient (the data needs none)
    assert ops.count(torch.ops.aten.addmm.default) == 2
    assert ops.count(torch.ops.aten.mm.default) == 3
    first, second = 5 * 7, 7 * 3
    assert sum(p.flops for p in products) == 2 * batch * (2 * first + 3 * second)


def test_replay_keeps_shapes_and_strides():
    a, b = torch.randn(6, 4), torch.randn(5, 4)
    (product,) = floor.record_products(lambda: a @ b.t())
    assert product.args[1] == ((4, 5), (1, 4))  # the transposed operand, as it came
    floor.replay([product])()  # runs
    broadcast = floor.operand((3, 4), (0, 1))
    assert broadcast.shape == (3, 4) and torch.equal(broadcast[0], broadcast[2])


def test_case_b_products_are_the_issue_s_work():
    subject = models.build("B")
    step = harness.training_step(subject, models.batch("B"))
    products = floor.record_products(step)
    weights = models.conditioner_weights(subject.module)
    # 6 x batch x weights, less the first coupling's input gradient into the data
    assert sum(p.flops for p in products) == 6 * 256 * weights - 2 * 256 * 392 * 1000
    assert len(products) == 4 * (6 + 6 + 6) - 1


def test_case_a_records_nine_products_a_coupling():
    step = harness.training_step(models.build("A"), models.batch("A"))
    assert len(floor.record_products(step)) == 8 * 9 - 1


def _case(step, products, adam, peers=None, flops=None, peak=100.0):
    timings = {"step": step, "products": products, "adam": adam, **(peers or {})}
    case = {
        "case": "X",
        "title": "test",
        "timings": {name: {"median_s": value} for name, value in timings.items()},
        "matmul_gflops": peak,
        "product_count": 3,
        "peers": list(peers or {}),
    }
    if flops is not None:
        case["step_flops"] = flops
    return case


@pytest.mark.parametrize(("peer", "reachable"), [(0.0131, True), (0.0129, False)])
def test_verdict_against_the_fastest_peer(peer, reachable):
    row = floor.verdict(_case(0.02, 0.008, 0.002, {"slow": 0.05, "fast": peer}))
    assert row["peer"] == "fast" and row["floor"] == pytest.approx(10.0)
    assert row["reachable"] is reachable


@pytest.mark.parametrize(("flops", "reachable"), [(0.81e9, True), (0.79e9, False)])
def test_verdict_against_the_matmul_peak(flops, reachable):
    # a floor of 10 ms at a 100 GFLOP/s peak: 80% needs 0.8 GFLOP a step
    row = floor.verdict(_case(0.02, 0.008, 0.002, {"p": 0.03}, flops=flops))
    assert row["reachable"] is reachable
    assert "no" in floor.report({"cases": [_case(0.02, 0.008, 0.002, flops=0.5e9)]})


def test_the_report_gives_eager_and_compiled_steps_over_the_floor():
    case = _case(0.02, 0.008, 0.002)  # a floor of 10 ms
    case["timings"]["compiled"] = {"median_s": 0.012}
    line = floor.report({"cases": [case]}).splitlines()[-1]
    assert "| 12.00 |" in line and "| **2.00x** | 1.20x |" in line
    del case["timings"]["compiled"]
    case["compile_error"] = "InvalidCxxCompiler: no compiler"
    line = floor.report({"cases": [case]}).splitlines()[-1]
    assert line.count("InvalidCxxCompiler: no compiler") == 2
