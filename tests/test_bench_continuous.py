"""The continuous-flow benchmarks (benchmarks/cnf_batch.py, benchmarks/cnf_toys.py) run and
measure what they say; zuko's rows need the bench extra."""

import importlib
import json
import sys
from pathlib import Path

import torch

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
    cnf_toys.main(["--data", "two-moons", "--minutes", "0.005", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    flowforge = next(r for r in rows if r["library"] == "flowforge")
    assert flowforge["steps"] >= 1 and flowforge["nfe_10k"] > 0
    assert abs(flowforge["gap"] - (flowforge["test_nll"] - 1.007584835)) < 1e-9
    capsys.readouterr()
    cnf_toys.main(["--table", "--out", str(out)])
    table = capsys.readouterr().out
    assert "| two-moons | flowforge |" in table and table.count("\n") == 2 + len(rows)
