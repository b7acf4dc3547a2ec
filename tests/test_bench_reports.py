"""The benchmark reports: the quality tables (benchmarks/quality.py) and the speed summary
(benchmarks/__main__.py), on made-up records; the block-triangular products of
benchmarks/masked_matmul.py against the dense ones."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))
quality = importlib.import_module("benchmarks.quality")
speed = importlib.import_module("benchmarks.__main__")
masked_matmul = importlib.import_module("benchmarks.masked_matmul")


def record(library, nll, seed=0, data="two-moons", **extra):
    return {
        "data": data,
        "model": "maf",
        "library": library,
        "seed": seed,
        "nll": nll,
        "se": 0.01,
        "nll_at_best": nll - 0.1,
        "se_at_best": 0.02,
        **extra,
    }


def cells(table: str, row: int) -> list[str]:
    return [c.strip() for c in table.splitlines()[2 + row].strip("|").split("|")]


def test_quality_report_averages_seeds_and_bolds_the_best():
    records = [
        record("flowforge", 1.0, seed=0),
        record("flowforge", 1.2, seed=1),
        record("zuko", 1.05, seed=0),
    ]
    end = quality.report(records, at_best=False)
    assert cells(end, 0)[:3] == ["two-moons", "maf", "2"]
    # flowforge: mean 1.1, standard error over the two seeds 0.1; zuko: one seed, its s.e.
    assert cells(end, 0)[3:] == ["1.100 ± 0.100", "**1.050 ± 0.010**"]
    best = quality.report(records, at_best=True)
    assert cells(best, 0)[3:] == ["1.000 ± 0.100", "**0.950 ± 0.020**"]


def test_quality_report_gives_discrete_data_in_bits_per_dim():
    per_nat = 1 / (64 * math.log(2))
    digits = dict(data="digits", bpd_se=0.01 * per_nat)
    records = [
        record("flowforge", 10.0, bits_per_dim=2.5, bits_per_dim_at_best=2.4, **digits),
        record("nflows", 20.0, bits_per_dim=2.7, bits_per_dim_at_best=2.6, **digits),
    ]
    row = cells(quality.report(records, at_best=True), 0)
    assert row[0] == "digits (bits/dim)"
    assert row[3:] == [f"**2.400 ± {0.02 * per_nat:.3f}**", f"2.600 ± {0.02 * per_nat:.3f}"]


def test_quality_report_lists_the_toys_by_family_then_the_digits():
    digits = dict(data="digits", bpd_se=0.001, bits_per_dim=2.5, bits_per_dim_at_best=2.4)
    records = [
        record("flowforge", 10.0, **digits),
        record("flowforge", 2.0, data="checkerboard", model="nsf"),
        record("flowforge", 2.0, data="checkerboard"),
        record("flowforge", 1.0, data="two-moons", model="realnvp"),
    ]
    table = quality.report(records, at_best=False)
    rows = [cells(table, i)[:2] for i in range(4)]
    assert rows == [
        ["two-moons", "realnvp"],
        ["checkerboard", "maf"],
        ["checkerboard", "nsf"],
        ["digits (bits/dim)", "maf"],
    ]


def test_quality_merge_replaces_the_same_run_and_keeps_the_others(tmp_path):
    path = tmp_path / "quality.json"
    path.write_text('[{"data": "two-moons", "library": "zuko", "nll": 1.0}]')  # first format
    merged = quality.merge(path, [record("zuko", 2.0, seed=1)])
    assert [(r["model"], r["seed"], r["nll"]) for r in merged] == [
        ("realnvp", 0, 1.0),
        ("maf", 1, 2.0),
    ]
    path.write_text(str(merged).replace("'", '"'))
    again = quality.merge(path, [record("zuko", 3.0, seed=1)])
    assert [r["nll"] for r in again] == [1.0, 3.0]


def test_quality_overfitting_needs_a_sustained_rise():
    # 100 epochs: windows of 10; the test set's standard error is 0.1
    flat = {"train": [1.0] * 100, "val": [1.1] * 100}
    assert quality.overfits(flat, se=0.1) is False
    spike = {"train": [1.0] * 100, "val": [1.1] * 99 + [2.5]}  # one noisy epoch: +0.14
    assert quality.overfits(spike, se=0.1) is False
    rising = {"train": [1.0] * 100, "val": [1.1] * 50 + [1.1 + 0.02 * i for i in range(50)]}
    assert quality.overfits(rising, se=0.1) is True
    assert quality.overfits({"train": [], "val": []}, se=0.1) is None


def test_speed_summary_gives_medians_and_ratios():
    def timing(library, median):
        return {"library": library, "median_s": median, "q1_s": median - 1e-4, "q3_s": median}

    results = {
        "cases": [
            {
                "case": "A",
                "title": "Real NVP",
                "train": [timing("flowforge", 0.004), timing("zuko", 0.006)],
                "sample": [timing("flowforge", 0.002), timing("zuko", 0.001)],
            },
            {
                "case": "E",
                "title": "planar",
                "train": [timing("flowforge", 0.01), timing("pyro", 0.02)],
                "sample": [timing("flowforge", 0.002), timing("pyro", 0.002)],
            },
        ]
    }
    table = speed.summary(results)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[3:] == ["zuko", "pyro"]
    assert cells(table, 0) == ["A. Real NVP", "training step", "4.00 ± 0.05", "6.00 (1.50x)", "—"]
    assert cells(table, 1) == ["", "sampling", "2.00 ± 0.05", "1.00 (0.50x)", "—"]
    assert cells(table, 2)[3:] == ["—", "20.00 (2.00x)"]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_block_triangular_products_equal_the_dense_ones(k):
    torch.manual_seed(0)
    for mask in masked_matmul.case_c_masks():
        out, inp = mask.shape
        weight = torch.randn(out, inp, dtype=torch.float64) * mask
        h = torch.randn(inp, 7, dtype=torch.float64)
        g = torch.randn(out, 7, dtype=torch.float64)
        dense = masked_matmul.products(mask, None, weight, h, g)
        dense = {name: product().clone() for name, product in dense.items()}
        blocked = masked_matmul.products(mask, k, weight, h, g)
        torch.testing.assert_close(blocked["forward"](), dense["forward"])
        torch.testing.assert_close(blocked["input grad"](), dense["input grad"])
        torch.testing.assert_close(blocked["weight grad"]() * mask, dense["weight grad"] * mask)


def test_scale_bound_report_averages_seeds_per_bound():
    scale_bound = importlib.import_module("benchmarks.scale_bound")

    def run(data, bound, seed, end, best, epoch, **extra):
        nll = (
            {"bits_per_dim": end, "bits_per_dim_at_best": best}
            if data == "digits"
            else {"nll": end, "nll_at_best": best}
        )
        common = dict(train_nll=-100.0, overfits=epoch < 80, **{"model": "maf", **extra})
        return dict(common, data=data, scale_bound=bound, seed=seed, best_epoch=epoch, **nll)

    records = [
        run("digits", 3.0, 0, 4.0, 2.5, 70, epochs=200),
        run("digits", 3.0, 1, 3.0, 2.4, 70, epochs=200),
        run("digits", 1.0, 0, 2.9, 2.45, 60, epochs=200),
        run("checkerboard", 1.0, 0, 2.25, 2.24, 90, epochs=100),
        run("checkerboard", 1.0, 0, 2.35, 2.34, 95, epochs=100, init="random"),
        run("checkerboard", None, 0, 2.17, 2.16, 94, epochs=100, init="random", model="nsf"),
    ]
    lines = scale_bound.report(records).splitlines()
    assert len(lines) == 7
    # records without an init are of the identity initialisation, listed first
    assert lines[2].startswith("| checkerboard | maf | 1 | identity | 1 | 2.250 | 2.240 | 90/100 ")
    assert lines[3].startswith("| checkerboard | maf | 1 | random | 1 | 2.350 | 2.340 | 95/100 ")
    # a spline has no scale bound
    assert lines[4].startswith("| checkerboard | nsf | - | random | 1 | 2.170 | 2.160 | 94/100 ")
    # the larger bound first; two seeds: mean ± standard error (stdev / sqrt 2 = 0.5)
    digits = "| digits (bits/dim) | maf |"
    assert lines[5].startswith(f"{digits} 3 | identity | 2 | 3.500 ± 0.500 | 2.450 ± 0.050")
    assert lines[5].endswith("| 2/2 |")
    assert lines[6].startswith(f"{digits} 1 | identity | 1 | 2.900 | 2.450 | 60/200 ")


def test_flowforge_benchmark_models_take_builder_options():
    flowforge_models = importlib.import_module("benchmarks.flowforge_models")
    subject = flowforge_models.build("C", 8, scale_bound=1.0)
    bounds = {m.scale_bound for m in subject.module.modules() if hasattr(m, "scale_bound")}
    assert bounds == {1.0}
    with pytest.raises(ValueError, match="not case 'B'"):
        flowforge_models.build("B", scale_bound=1.0)


def test_random_init_redraws_the_zero_last_layers():
    scale_bound = importlib.import_module("benchmarks.scale_bound")
    flowforge_models = importlib.import_module("benchmarks.flowforge_models")
    for case in ("A", "C", "D"):
        flow = flowforge_models.build(case, 4).module
        x = torch.randn(8, 4)
        # identity at initialisation: the density is the base's
        torch.testing.assert_close(flow.log_prob(x), flow.base.log_prob(x))
        scale_bound.randomise_last_layers(flow)
        assert not torch.allclose(flow.log_prob(x), flow.base.log_prob(x))


def test_scale_bound_report_takes_the_default_rows_from_the_quality_runs(tmp_path):
    scale_bound = importlib.import_module("benchmarks.scale_bound")
    common = dict(data="two-moons", epochs=100, train_nll=1.0, overfits=False, best_epoch=90)
    quality_runs = [
        dict(common, library="flowforge", model="maf", seed=0, nll=1.08, nll_at_best=1.06),
        dict(common, library="flowforge", model="nsf", seed=0, nll=1.07, nll_at_best=1.05),
        dict(common, library="zuko", model="maf", seed=0, nll=1.00, nll_at_best=1.00),
    ]
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(quality_runs))
    defaults = scale_bound.default_runs([path, tmp_path / "missing.json"])
    # flowforge's runs only, at the default bound (none for a spline) and the identity start
    assert sorted((r["model"], r["scale_bound"], r["init"]) for r in defaults) == [
        ("maf", 3.0, "identity"),
        ("nsf", None, "identity"),
    ]
    # the ablation's own run of a default configuration is kept over the quality run's
    own = dict(defaults[0], nll=1.5)
    records = scale_bound.with_defaults([own], defaults)
    assert len(records) == 2 and records[0]["nll"] == 1.5
    lines = scale_bound.report(records).splitlines()
    assert lines[2].startswith("| two-moons | maf | 3 | identity | 1 | 1.500 | 1.060 |")
    assert lines[3].startswith("| two-moons | nsf | - | identity | 1 | 1.070 | 1.050 |")


def test_softplus_scale_is_nflows_map_and_inverts():
    scale_bound = importlib.import_module("benchmarks.scale_bound")
    flowforge_models = importlib.import_module("benchmarks.flowforge_models")
    torch.manual_seed(0)
    flow = flowforge_models.build("C", 3).module.double()
    scale_bound.randomise_last_layers(flow)
    scale_bound.use_softplus_scale(flow)
    x = torch.randn(16, 3, dtype=torch.float64)
    z, logdet = flow.transform(x)
    with torch.no_grad():  # the one-pass inverse
        back, inverse_logdet = flow.transform.inverse(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inverse_logdet, -logdet)
    # at zero parameters every layer scales by softplus(0) + 1e-3: log-det 5 * 3 * log of it
    for p in flow.parameters():
        torch.nn.init.zeros_(p)
    _, logdet = flow.transform(x)
    expected = 15 * math.log(math.log(2) + 1e-3)
    torch.testing.assert_close(logdet, torch.full_like(logdet, expected))
    with pytest.raises(ValueError, match="for the MAF"):
        scale_bound.use_softplus_scale(flowforge_models.build("A", 2).module)
    record = dict(scale_bound=None, scale="softplus")
    assert scale_bound.bound_label(record) == "softplus"
    assert scale_bound.bound_label(dict(scale_bound=None)) == "-"
    assert scale_bound.bound_label(dict(scale_bound=3.0)) == "3"


def test_missing_peers_are_skipped_with_a_line(monkeypatch, capsys):
    peers = importlib.import_module("benchmarks.peers")
    monkeypatch.setattr(peers, "available", lambda library: library != "nflows")
    assert peers.installed(["nflows", "zuko"]) == ["zuko"]
    assert "- nflows: not installed, skipped" in capsys.readouterr().out
