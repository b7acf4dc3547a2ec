"""The benchmark reports: the quality tables (benchmarks/quality.py) and the speed summary
(benchmarks/__main__.py), on made-up records."""

import importlib
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))
quality = importlib.import_module("benchmarks.quality")
speed = importlib.import_module("benchmarks.__main__")


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
