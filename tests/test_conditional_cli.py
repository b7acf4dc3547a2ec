"""Data files and conditional density estimation from the command line: ``flowforge fit``
on a .npz / .npy / .csv file, with a context; ``sample --context``, ``eval`` and ``plot`` of
the conditional run; the loaders' one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import flowforge
from flowforge import datasets
from flowforge.cli import main
from flowforge.runs.config import ConfigError
from flowforge.runs.setup import build_model, make_config

NOISE = 0.1  # x | c ~ N(c, NOISE^2 I) in 2-D, c ~ U(-2, 2)^2
FAST = [
    "--layers",
    "4",
    "--hidden",
    "32,32",
    "--lr",
    "3e-3",
    "--batch-size",
    "128",
    "--no-progress",
]


def conditional_pairs(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    context = rng.uniform(-2, 2, size=(n, 2))
    return context + NOISE * rng.normal(size=(n, 2)), context


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> tuple[Path, Path]:
    """A realnvp fitted to x | c from an .npz file: (run directory, data file)."""
    folder = tmp_path_factory.mktemp("conditional")
    x, context = conditional_pairs()
    data = folder / "pairs.npz"
    np.savez(data, x=x, context=context)
    out = folder / "run"
    args = ["fit", "--data", str(data), "--model", "realnvp", "--epochs", "10", "--out", str(out)]
    assert main([*args, *FAST, "--no-plots"]) == 0
    return out, data


def one_line_error(capsys, code: int, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err


# ----------------------------------------------------------------------- the conditional run


def test_conditional_fit_records_the_data_file_and_the_context(conditional_run):
    out, data = conditional_run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"] == str(data.resolve()) and config["context_columns"] is None
    assert config["patience"] == 20 and config["model_args"] == {"actnorm": True}  # tabular
    model = json.loads((out / "model.json").read_text())["config"]
    assert model["context_dim"] == 2 and model["dim"] == 2
    flow = flowforge.load(out)
    x = torch.tensor([[1.0, -1.0]])
    near, far = flow.log_prob(x, torch.tensor([[1.0, -1.0]])), flow.log_prob(x, torch.zeros(1, 2))
    assert near.item() > far.item() + 10  # the density moves with the context


def test_eval_prints_the_conditional_nll_beating_the_unconditional_gaussian(
    conditional_run, capsys
):
    out, _ = conditional_run
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    table = capsys.readouterr().out
    assert "each with a context of 2 values" in table and "realnvp q(x|c)" in table
    result = json.loads((out / "eval.json").read_text())
    assert result["context_dim"] == 2 and result["flow"]["n"] == 200
    # x | c has entropy log(2 pi e 0.01) = -1.77 nats; x alone about 2 log 4 = 2.8 nats.
    assert result["flow"]["nll"] < result["gaussian"]["nll"] - 3.5
    assert abs(result["flow"]["nll"] - result["conditional_gaussian"]["nll"]) < 0.5


def test_sample_with_a_context_or_a_context_file_follows_the_context(
    conditional_run, tmp_path, capsys
):
    out, _ = conditional_run
    path = tmp_path / "samples.npy"
    args = ["sample", str(out), "-n", "400", "--out", str(path), "--seed", "1"]
    assert main([*args, "--context=1.5,-1"]) == 0
    samples = np.load(path)
    assert samples.shape == (400, 2)
    assert np.abs(samples.mean(0) - [1.5, -1.0]).max() < 0.1
    assert 0.05 < samples.std(0).mean() < 0.2

    contexts = np.array([[-1.5, 1.5], [0.0, 0.0], [1.0, 0.5]])
    np.save(tmp_path / "contexts.npy", contexts)
    capsys.readouterr()
    assert main([*args, "--context-file", str(tmp_path / "contexts.npy")]) == 0
    assert "400 samples for each of 3 contexts" in capsys.readouterr().out
    samples = np.load(path)
    assert samples.shape == (400, 3, 2)  # (n, contexts, D), as Flow.sample lays them out
    assert np.abs(samples.mean(0) - contexts).max() < 0.1
    (tmp_path / "contexts.csv").write_text("c1,c2\n-1.5,1.5\n")
    assert main([*args, "--context-file", str(tmp_path / "contexts.csv")]) == 0
    assert np.load(path).shape == (400, 1, 2)


def test_plot_of_a_conditional_run_draws_samples_for_test_contexts(conditional_run, capsys):
    out, _ = conditional_run
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "conditional run: no density" in printed
    assert (out / "plots" / "conditional_samples.png").stat().st_size > 10_000
    assert (out / "plots" / "loss.png").stat().st_size > 10_000
    assert not (out / "plots" / "density.png").exists()


def test_sample_context_errors_are_one_line(conditional_run, tmp_path, capsys):
    out, _ = conditional_run
    target = ["--out", str(tmp_path / "s.npy")]
    code = main(["sample", str(out), *target])
    one_line_error(capsys, code, "is conditional on a context of 2 values", "--context")
    code = main(["sample", str(out), *target, "--context", "1,2,3"])
    one_line_error(capsys, code, "needs contexts of 2 values", "got shape (3,)")
    code = main(["sample", str(out), *target, "--context", "one,two"])
    one_line_error(capsys, code, "--context must be finite numbers")
    code = main(["sample", str(out), *target, "--context-file", str(tmp_path / "no.npy")])
    one_line_error(capsys, code, "context file", "does not exist")

    x, _ = conditional_pairs(200)
    np.save(tmp_path / "x.npy", x)
    plain = tmp_path / "plain"
    args = ["fit", "--data", str(tmp_path / "x.npy"), "--out", str(plain), "--epochs", "1"]
    assert main([*args, *FAST, "--no-plots"]) == 0
    assert json.loads((plain / "model.json").read_text())["config"]["context_dim"] == 0
    code = main(["sample", str(plain), *target, "--context", "0.5,0.5"])
    one_line_error(capsys, code, "is not conditional; it takes no context")


def test_a_model_without_a_context_is_a_one_line_error(conditional_run, tmp_path, capsys):
    _, data = conditional_run
    args = ["fit", "--data", str(data), "--model", "planar", "--out", str(tmp_path / "run")]
    code = main([*args, "--epochs", "1", "--no-progress"])
    one_line_error(capsys, code, "model 'planar' is not conditional", "realnvp")
    config = make_config(None, {"data": str(data), "model_args": {"context_dim": 3}})
    with pytest.raises(ConfigError, match="'context_dim' is set by the data"):
        build_model(config, 2, context_dim=2)


# ------------------------------------------------------------------------------- CSV files


def test_csv_with_context_columns_by_header_name(tmp_path, capsys):
    x, context = conditional_pairs(300)
    table = np.column_stack([x[:, 0], context[:, 0], x[:, 1]])
    path = tmp_path / "table.csv"
    np.savetxt(path, table, delimiter=",", header="x1,c,x2")  # header line "# x1,c,x2"
    out = tmp_path / "run"
    args = ["fit", "--data", str(path), "--context-columns", "c", "--out", str(out)]
    assert main([*args, "--epochs", "1", *FAST, "--no-plots"]) == 0
    assert json.loads((out / "model.json").read_text())["config"]["context_dim"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["context_columns"] == "c"
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "each with a context of 1 value" in capsys.readouterr().out
    sample = ["sample", str(out), "-n", "5", "--out", str(tmp_path / "s.npy")]
    assert main([*sample, "--context", "0"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 2)

    data = datasets.load(str(path), context_columns=[1])  # the same split by index
    assert data.train.x.shape == (240, 2) and data.train.context.shape == (240, 1)
    assert data.train.x.dtype == torch.float32 and data.train.levels is None
    rows = {tuple(row) for row in np.float32(table).tolist()}
    joined = torch.cat([data.test.x[:, :1], data.test.context, data.test.x[:, 1:]], 1)
    assert all(tuple(row) in rows for row in joined.tolist())  # pairs stay together


def test_plain_csv_and_npy_files_split_80_10_10_with_the_seed(tmp_path):
    values = np.arange(60, dtype=np.float64).reshape(20, 3)
    np.save(tmp_path / "v.npy", values)
    (tmp_path / "v.csv").write_text("\n".join(",".join(map(str, row)) for row in values) + "\n")
    a, b = datasets.load(str(tmp_path / "v.npy")), datasets.load(str(tmp_path / "v.csv"))
    assert (len(a.train), len(a.val), len(a.test)) == (16, 2, 2)
    assert a.train.context is None and torch.equal(a.test.x, b.test.x)
    everything = torch.cat([a.train.x, a.val.x, a.test.x])
    assert torch.equal(everything[everything[:, 0].argsort()], torch.from_numpy(values).float())
    assert not torch.equal(datasets.load(str(tmp_path / "v.npy"), seed=1).test.x, a.test.x)
    assert len(datasets.load(str(tmp_path / "v.npy"), n=10).train) == 8


# ------------------------------------------------------------------------- loader errors


def write(tmp_path: Path, name: str, **arrays) -> str:
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **arrays)
    elif name.endswith(".npy"):
        np.save(path, arrays["x"], allow_pickle=True)
    else:
        path.write_text(arrays["text"])
    return str(path)


GOOD = np.zeros((20, 2))
BAD_FILES = [
    ("missing.npz", None, "data file", "does not exist"),
    ("keys.npz", {"y": GOOD}, "expected an array 'x' and optionally 'context'", "'y'"),
    ("extra.npz", {"x": GOOD, "ctx": GOOD}, "found arrays 'ctx', 'x'", ""),
    ("dims.npz", {"x": np.zeros(20)}, "x must be a 2-D array (N, D)", "(20,)"),
    ("nan.npz", {"x": np.where(np.eye(20, 2), np.nan, 0.0)}, "NaN or infinite", "row 0"),
    ("big.npy", {"x": np.full((20, 2), 1e300)}, "NaN or infinite values (as float32)", ""),
    ("pairs.npz", {"x": GOOD, "context": np.zeros((19, 1))}, "x has 20 rows", "context has 19"),
    ("pickle.npy", {"x": np.array([{"a": 1}] * 20, dtype=object)}, "not a usable .npy", ""),
    ("few.npz", {"x": np.zeros((9, 2))}, "needs at least 10 rows", ""),
    ("words.csv", {"text": "a,b\n1,2\n3,oops\n"}, "line 3, column 2: 'oops' is not a number", ""),
    ("ragged.csv", {"text": "1,2\n3\n"}, "line 2: 1 values, but earlier rows have 2", ""),
    ("header.csv", {"text": "a,b,c\n1,2\n"}, "the header names 3 columns", ""),
    ("table.txt", {"text": "1,2\n"}, "unsupported data file type '.txt'", ""),
]


@pytest.mark.parametrize(("name", "arrays", "message", "more"), BAD_FILES)
def test_bad_data_files_give_one_line_errors(tmp_path, name, arrays, message, more):
    path = str(tmp_path / name) if arrays is None else write(tmp_path, name, **arrays)
    expected = FileNotFoundError if arrays is None else ValueError
    with pytest.raises(expected) as error:
        datasets.load(path)
    text = str(error.value)
    assert "\n" not in text and message in text and more in text and name in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("d", "context column 'd' is neither a column index nor a header name"),
        ("3", "context column '3' is out of range for 3 columns"),
        ("a,0", "context column '0' is given twice"),
        ("a,b,c", "every column is a context column"),
    ],
)
def test_bad_context_columns(tmp_path, spec, message):
    path = write(tmp_path, "t.csv", text="a,b,c\n" + "1,2,3\n" * 20)
    with pytest.raises(ValueError, match=message):
        datasets.load(path, context_columns=spec)


def test_names_and_paths_are_told_apart(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("two-moons.npz", x=np.zeros((20, 2)))
    assert datasets.load("two-moons", n=100).name == "two-moons"  # a name stays a name
    assert datasets.load("two-moons.npz").name == "two-moons.npz"  # a relative path
    with pytest.raises(ValueError, match=r"unknown dataset 'moons'.*or a \.npz, \.npy or \.csv"):
        datasets.load("moons")
    with pytest.raises(ValueError, match="context_columns applies to data files only"):
        datasets.load("two-moons", context_columns="0")
    assert "two-moons.npz" not in datasets.DATASETS and "two-moons" in datasets.DATASETS
    code = main(["fit", "--data", "rings", "--context-columns", "0", "--out", "run"])
    one_line_error(capsys, code, "'context_columns' applies to data files only")
    code = main(["fit", "--data", "nothere.csv", "--out", "run", "--no-progress"])
    one_line_error(capsys, code, "data file", "nothere.csv does not exist")
