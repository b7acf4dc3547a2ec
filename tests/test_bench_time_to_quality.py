"""benchmarks/time_to_quality.py: the time to a target read from a curve, the speed-up over
the best peer (a lower bound where no peer got there), the table, and flowforge's contestant
stopping at its target."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))
ttq = importlib.import_module("benchmarks.time_to_quality")


def test_the_first_time_under_the_target():
    curve = [(1.0, 3.0), (2.0, None), (3.0, 1.9), (4.0, 1.5)]
    assert ttq.first_time(curve, 2.0) == 3.0
    assert ttq.first_time(curve, 1.0) is None


def test_the_speedup_over_the_best_peer():
    result = ttq.speedup(10.0, {"zuko": 25.0, "nflows": 15.0, "normflows": None}, 120.0)
    assert result == {"speedup_over_best_peer": 1.5, "best_peer": "nflows", "lower_bound": False}
    bound = ttq.speedup(10.0, {"zuko": None}, 120.0)
    assert bound == {"speedup_over_best_peer": 12.0, "best_peer": None, "lower_bound": True}
    assert ttq.speedup(None, {"zuko": 3.0}, 120.0)["speedup_over_best_peer"] is None


def test_the_table():
    row = {
        "row": "two-moons-realnvp",
        "seed": 0,
        "target": 1.088,
        "seconds": {"flowforge": 5.0, "zuko": 8.0, "nflows": None},
        **ttq.speedup(5.0, {"zuko": 8.0, "nflows": None}, 60.0),
    }
    line = ttq.table({"rows": [row]}).splitlines()[-1]
    assert line == "| two-moons-realnvp | 0 | 1.088 | 5.0 | zuko 8.0, nflows - | zuko | 1.60x |"
    row["seconds"]["flowforge ema=0.99"] = 4.0
    line = ttq.table({"rows": [row]}).splitlines()[-1]
    assert "| 5.0 (ema=0.99: 4.0) | zuko 8.0, nflows - |" in line


def test_flowforge_stops_at_its_target():
    row = ttq.ROWS["two-moons-realnvp"]
    data = ttq.dataset(row)
    target = ttq.target_of(row, data)
    assert target == pytest.approx(data.entropy + 0.08)
    curve, _ = ttq.run_flowforge(row, data, target=10.0, budget=60.0, seed=0)
    assert len(curve) == 1 and curve[0][1] <= 10.0  # reached at the first epoch: stopped
    curve, _ = ttq.run_flowforge(row, data, target=-10.0, budget=0.0, seed=0)
    assert len(curve) == 1 and ttq.first_time(curve, -10.0) is None  # the budget ended it


def test_the_variational_row_stops_at_its_kl():
    row = ttq.ROWS["vi-realnvp"]
    assert ttq.dataset(row) is None and ttq.target_of(row, None) == 0.002
    curve = ttq.run_variational("flowforge", row, target=1.0, budget=60.0, seed=0)
    assert len(curve) == 1 and 0 <= curve[0][1] <= 1.0  # a KL, reached at the first score


def test_the_summary_takes_medians_over_seeds():
    rows = []
    for seed, (ours, peer) in enumerate([(2.0, 4.0), (3.0, 3.0), (1.0, None)]):
        row = {
            "row": "r",
            "seed": seed,
            "target": 1.0,
            "seconds": {"flowforge": ours, "zuko": peer},
        }
        rows.append({**row, **ttq.speedup(ours, {"zuko": peer}, 10.0)})
    line = ttq.summary({"rows": rows}).splitlines()[-1]
    # speed-ups 2.0, 1.0 and (no peer got there) >= 10: the median 2.0, a lower bound
    assert line == "| r | 1.000 | 3 | 2.0 | 3.5 | ≥ 2.00x (1.00-10.00) |"


def test_the_variants_table_gives_each_contestant_s_median():
    rows = [
        {"row": "r", "seconds": {"flowforge": 2.0, "flowforge lr=0.003": None}},
        {"row": "r", "seconds": {"flowforge": 4.0, "flowforge lr=0.003": 1.0}},
        {"row": "r", "seconds": {"flowforge": 3.0, "flowforge lr=0.003": 2.0}},
    ]
    lines = ttq.variants({"rows": rows}).splitlines()
    assert lines[0] == "| row | seeds | defaults | lr=0.003 |"
    # the unreached seed counts as slowest: the median of 1, 2, inf is 2
    assert lines[-1] == "| r | 3 | 3.0 | 2.0 |"
    rows[1]["seconds"]["flowforge lr=0.003"] = None
    assert ttq.variants({"rows": rows}).splitlines()[-1] == "| r | 3 | 3.0 | - |"


def test_a_variant_of_adams_betas_and_a_warm_up_become_fit_keywords():
    from benchmarks import time_to_quality as ttq

    row = ttq.ROWS["two-moons-realnvp"]
    assert ttq._number("0.9,0.99") == (0.9, 0.99) and ttq._number("500") == 500
    settings = ttq.fit_settings(row, 1000, {"betas": (0.9, 0.99), "eps": 1e-6, "warmup": 10})
    assert "lr" not in settings  # given to the optimizer instead
    model = torch.nn.Linear(2, 2)
    optimizer = settings["optimizer"](list(model.parameters()))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.99), 1e-6)
    scheduler = settings["scheduler"](optimizer)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-5) and rates[10] == pytest.approx(1e-3, rel=1e-3)
    assert ttq.fit_settings(row, 1000, {"lr": 2e-3}) == {
        "epochs": row.epochs,
        "batch_size": row.batch_size,
        "lr": 2e-3,
    }


def test_a_threads_variant_trains_on_that_many_threads_and_restores_them(monkeypatch):
    row = ttq.ROWS["two-moons-realnvp"]
    data = ttq.dataset(row)
    seen = []
    fit = ttq.ff.fit
    monkeypatch.setattr(
        ttq.ff, "fit", lambda *a, **k: seen.append(torch.get_num_threads()) or fit(*a, **k)
    )
    before = torch.get_num_threads()
    ttq.run_flowforge(row, data, target=10.0, budget=60.0, seed=0, threads=before + 1)
    assert seen == [before + 1] and torch.get_num_threads() == before
