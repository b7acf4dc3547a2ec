"""The continuous-flow benchmarks (benchmarks/cnf_batch.py, benchmarks/cnf_toys.py) run and
measure what they say; zuko's rows need the bench extra, the amortized benchmark sbi."""

import importlib
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from flowforge.inference.simulators import TwoMoons

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))
cnf_batch = importlib.import_module("benchmarks.cnf_batch")
cnf_toys = importlib.import_module("benchmarks.cnf_toys")


def test_the_batch_measurement_of_flowforges_cnf_is_round_off():
    probes = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    changes = cnf_batch.measure(cnf_batch.flowforge_model(0), probes, crowd_size=100, seed=0)
    assert set(changes) == {"normal", "4x wider", "one outlier"}
    assert 0 <= max(changes.values()) < 1e-9


def test_a_toy_run_writes_its_rows_and_the_table(tmp_path, capsys):
    out = tmp_path / "cnf_toys.json"
    weights = tmp_path / "weights"
    toy = ["--data", "two-moons", "--minutes", "0.005", "--out", str(out), "--save", str(weights)]
    cnf_toys.main(toy)
    rows = json.loads(out.read_text())["rows"]
    flowforge = next(r for r in rows if r["library"] == "flowforge")
    assert flowforge["steps"] >= 1 and flowforge["nfe_10k"] > 0
    assert abs(flowforge["gap"] - (flowforge["test_nll"] - 1.007584835)) < 1e-9
    capsys.readouterr()
    assert len(flowforge["curve"]) >= 1 and flowforge["curve"][-1][0] > 0
    cnf_toys.main(["--table", "--out", str(out)])
    rows_table, _, quality = capsys.readouterr().out.partition("\n\n")
    assert "| two-moons | flowforge | 0.005 |" in rows_table
    assert rows_table.count("\n") == 1 + len(rows)
    assert "time to likelihood training's quality at 0.005 minutes" in quality
    cnf_toys.main(["--sampling", str(weights), "--out", str(out), "--steps", "3"])
    row = next(r for r in json.loads(out.read_text())["rows"] if r["library"] == "flowforge")
    assert row["fixed"] == "rk4 x 3" and 0 < row["fixed_error"] < 1
    assert row["sample_nfe"] > 0 and row["fixed_10k_s"] > 0
    figure = tmp_path / "toys.png"
    cnf_figure = importlib.import_module("benchmarks.cnf_figure")
    cnf_figure.main([str(weights), "--minutes", "0.005", "--resolution", "8", "--out", str(figure)])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5_000


def test_the_time_to_quality_is_read_from_the_curves():
    curves = {
        "flowforge": [(30, 0.5), (60, 0.2), (90, 0.1)],
        "flowforge-fm": [(30, 0.15), (60, 0.09), (90, 0.08)],
        "flowforge-fm-ot": [(30, 0.3), (60, 0.1), (90, 0.05)],
        "zuko": [(30, 0.6), (60, 0.3), (90, 0.2)],
    }
    rows = [
        {"data": "rings", "library": m, "train_minutes": 1.5, "curve": c} for m, c in curves.items()
    ]
    assert cnf_toys.first_time(curves["flowforge-fm"], 0.1) == 60
    assert cnf_toys.first_time(curves["zuko"], 0.1) is None
    table = cnf_toys.quality_table({"rows": rows}, 1.5).splitlines()
    assert table[0].startswith("| data | target NLL - H(p) | flowforge | zuko | flowforge-fm |")
    assert table[2] == "| rings | 0.100 | 90 s | - | 60 s | 60 s | 1.5x |"


@pytest.mark.extra("sbi")
def test_the_amortized_benchmark_scores_the_exact_posterior_as_the_truth():
    """Scored against itself, the exact two-moons posterior has KL 0, a c2st of one half and
    uniform SBC ranks: the metrics measure what they say."""
    amortized = importlib.import_module("benchmarks.amortized_fm")
    simulator = TwoMoons()

    def log_prob(theta, observation):
        return simulator.log_posterior(theta[:, None], observation[None])[:, 0]

    exact = amortized.Posterior(log_prob, lambda xs, n: simulator.sample_posterior(xs, n))
    _, observations = simulator.sample_joint(2, seed=1000)
    scores = amortized.evaluate(exact, simulator, observations, Namespace(draws=500, sbc=100))
    assert scores["kl"] == 0.0
    # 5-fold accuracy on 1,000 points of one distribution: 0.5 with a standard error ~0.016
    assert 0.4 < scores["c2st"] < 0.6
    assert scores["sbc_min_p"] > 1e-3
    rows = [{"model": "sbi fmpe", "simulations": 10, "train_s": 1.0, "epochs": 3, **scores}]
    assert amortized.table(rows).splitlines()[2].startswith("| sbi fmpe | - | 10 | 0.000 |")
