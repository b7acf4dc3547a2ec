"""The command line: --version, --help and the demo."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import flowforge
from flowforge.cli import main


def test_version_and_help_from_a_subprocess():
    version = subprocess.run(
        [sys.executable, "-m", "flowforge", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"flowforge {flowforge.__version__}"
    shown = subprocess.run(
        [sys.executable, "-m", "flowforge", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: flowforge" in shown.stdout and "demo" in shown.stdout


def test_demo_prints_every_model(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for name in flowforge.flows.models.MODELS:
        row = next(line for line in out.splitlines() if line.startswith(f"{name} "))
        mean_log_p = float(row.split()[3])
        round_trip, gap = (float(v) for v in row.split()[-3:-1])
        # float32: the log-density of 784 pixels is a sum of ~1e4 terms, so compare relatively.
        assert round_trip < 1e-3 and gap < 1e-3 * max(1.0, abs(mean_log_p) / 10)


def fit_tiny(tmp_path, *extra, model="realnvp"):
    out = tmp_path / "run"
    args = ["fit", "--data", "two-moons", "--model", model, "--out", str(out)]
    args += ["--n", "1500", "--epochs", "2", "--layers", "2", "--hidden", "8,8", "--no-progress"]
    assert main([*args, *extra]) == 0
    return out


def test_fit_eval_sample_plot_from_the_command_line(tmp_path, capsys):
    out = fit_tiny(tmp_path)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["data"], config["model"], config["epochs"], config["layers"]) == (
        "two-moons",
        "realnvp",
        2,
        2,
    )
    state, _ = flowforge.training.checkpoint.read(out)  # a whole checkpoint of the last epoch
    assert len(state["history"]["epochs"]) == 2
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"val_nll"' in metrics[0]
    for figure in ("loss", "density", "samples", "layers"):
        assert (out / "plots" / f"{figure}.png").stat().st_size > 10_000, figure

    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    table = capsys.readouterr().out
    assert "full-covariance Gaussian" in table and "true entropy H(p)" in table
    written = json.loads((out / "eval.json").read_text())  # the numbers of the table
    data, _ = flowforge.runs.load_data(flowforge.runs.read_config(out))
    expected = flowforge.evaluate(flowforge.load(out), data.test)
    assert written["split"] == "test" and written["flow"]["n"] == len(data.test.x)
    assert written["flow"]["nll"] == pytest.approx(expected.nll, rel=1e-6)
    assert f"{written['flow']['nll']:.4f}" in table

    samples_path = tmp_path / "samples.npy"
    assert main(["sample", str(out), "-n", "300", "--out", str(samples_path)]) == 0
    samples = np.load(samples_path)
    assert samples.shape == (300, 2) and np.isfinite(samples).all()

    (out / "plots" / "density.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "plots" / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plots" / "density.png").stat().st_size > 10_000

    flow = flowforge.load(out)
    x = torch.from_numpy(samples)
    assert torch.equal(flow.log_prob(x), flowforge.load(out).log_prob(x))


@pytest.mark.parametrize("model", ["maf", "iaf", "nsf"])
def test_autoregressive_and_spline_models_from_the_command_line(model, tmp_path, capsys):
    out = fit_tiny(tmp_path, model=model)
    assert flowforge.load(out).config["model"] == model
    assert main(["eval", str(out)]) == 0
    assert model in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)


def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 3\nlr: 1e-3\nhidden: [8]\nlayers: 2\nn: 1000\nschedule: null\n")
    out = fit_tiny(tmp_path, "--config", str(config))  # --epochs 2 on the command line wins
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 2 and resolved["lr"] == 1e-3 and resolved["schedule"] is None
    assert resolved["hidden"] == [8, 8] and resolved["n"] == 1500


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lr: fast\n", "config value 'lr' must be a positive number, got 'fast'"),
        ("epochs: -3\n", "config value 'epochs' must be a positive integer, got -3"),
        ("learning_rate: 0.1\n", "unknown config key 'learning_rate'"),
        ("hidden: 64\n", "config value 'hidden' must be a list of positive widths"),
        ("data: moons\n", "config value 'data' must be one of"),
        ("model: glow9\n", "config value 'model' must be one of"),
        ("- a\n- list\n", "must hold a mapping of options"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    code = main(["fit", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err


def test_list_shows_every_dataset_and_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    names = [
        *flowforge.datasets.DATASETS,
        *flowforge.flows.models.MODELS,
        *flowforge.inference.targets.TARGETS,
    ]
    for name in names:
        assert f"  {name} " in out


def test_option_that_a_model_does_not_take(tmp_path, capsys):
    args = ["fit", "--data", "two-moons", "--model", "planar", "--hidden", "8"]
    code = main([*args, "--out", str(tmp_path / "run"), "--no-progress", "--epochs", "1"])
    assert code == 2 and "model 'planar' has no option 'hidden'" in capsys.readouterr().err


def test_image_data_reports_bits_per_dim_and_draws_sample_grids(tmp_path, capsys):
    out = tmp_path / "digits"
    args = ["fit", "--data", "digits", "--model", "nice", "--out", str(out), "--epochs", "1"]
    assert main([*args, "--hidden", "16", "--layers", "2", "--no-progress"]) == 0
    for figure in ("loss", "samples", "data"):
        assert (out / "plots" / f"{figure}.png").stat().st_size > 5_000, figure
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    table = capsys.readouterr().out
    assert "bits/dim" in table and "digits, test split, 269 samples" in table
    assert main(["plot", str(out), "--temperature", "0.5"]) == 0


def test_sigterm_stops_a_background_fit_cleanly_and_keeps_the_model(tmp_path):
    """A scheduler's SIGTERM (or kill -INT of a background job) ends training like Ctrl-C:
    the best weights saved, not a run directory without a model, and the shell's exit status
    of a signal (128 + 15), so that a job script knows the run did not finish."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "flowforge", "fit", "--data", "two-moons", "--out", str(out)]
    command += ["--n", "2000", "--epochs", "100000", "--layers", "2", "--hidden", "8"]
    process = subprocess.Popen(
        [*command, "--no-progress", "--no-plots"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.2)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert b"stopped by SIGTERM; interrupted by SIGTERM at epoch" in stderr
    # the model saved is the best epoch's: its validation NLL is the best one recorded
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    best = min(r["val_nll"] for r in records if r["val_nll"] is not None)
    data, _ = flowforge.runs.load_data(flowforge.runs.read_config(out))
    saved = flowforge.evaluate(flowforge.load(out), data.val)
    assert saved.nll == pytest.approx(best, rel=1e-5)


def test_resume_where_there_is_nothing_to_resume_says_so_and_starts_afresh(tmp_path, capsys):
    """A typo in --out must not pass for a resumed run."""
    fit_tiny(tmp_path, "--resume")  # tmp_path/run does not exist yet
    err = capsys.readouterr().err
    assert err.splitlines() == [f"nothing to resume in {tmp_path / 'run'}: starting a new run"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fit_tiny(fresh)
    x = torch.randn(5, 2)
    started, new = flowforge.load(tmp_path / "run"), flowforge.load(fresh / "run")
    assert torch.equal(started.log_prob(x), new.log_prob(x))
    fit_tiny(tmp_path, "--resume")  # now there is a checkpoint: resumed, and nothing said
    assert "nothing to resume" not in capsys.readouterr().err


def test_training_commands_restore_the_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    fit_tiny(tmp_path)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_fit_into_a_log_file_writes_one_short_line_per_epoch(tmp_path):
    """Off a terminal (a log file, CI, nohup) there is no progress bar, whose carriage returns
    would make one line of tens of thousands of characters: one line per epoch instead."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "flowforge", "fit", "--data", "two-moons", "--n", "3000"]
    command += ["--epochs", "4", "--layers", "2", "--hidden", "8", "--out", str(out), "--no-plots"]
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True)
    lines = log.read_text().splitlines()
    assert [line.split()[1] for line in lines[:4]] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[0].startswith("epoch 1/4  train ") and " val " in lines[0]
    assert len(lines) == 5 and lines[-1].startswith("finished after 4 epochs")
    assert max(len(line) for line in lines) <= 200 and "\r" not in log.read_text()


def test_vi_into_a_log_file_writes_one_short_line_every_twentieth_of_the_steps(tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "flowforge", "vi", "--target", "u1", "--model", "planar"]
    command += ["--layers", "2", "--steps", "2000", "--out", str(out), "--no-plots"]
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True)
    lines = log.read_text().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [f"{k}/2000" for k in range(100, 2001, 100)]
    assert lines[0].startswith("step 100/2000  elbo ") and lines[-1].startswith("finished after")
    assert max(len(line) for line in lines) <= 200 and "\r" not in log.read_text()


def test_adams_betas_and_epsilon_from_the_command_line_train_and_are_fixed_on_resume(tmp_path):
    """--adam-betas / --adam-eps: the checkpoint's optimiser has them; a resume may not change
    them, nor the rate, which then lives in that optimiser."""
    from flowforge.training import checkpoint

    out = tmp_path / "run"
    base = ["fit", "--data", "two-moons", "--n-samples", "600", "--layers", "2", "--no-plots"]
    base += ["--no-progress", "--out", str(out)]
    assert main([*base, "--epochs", "1", "--adam-betas", "0.9,0.99", "--adam-eps", "1e-4"]) == 0
    metadata, _ = checkpoint.read(out)
    group = metadata["param_groups"][0]
    assert (group["betas"], group["eps"]) == ([0.9, 0.99], 1e-4)
    resumed = [*base, "--epochs", "2", "--resume", "--adam-betas", "0.9,0.99", "--adam-eps"]
    assert main([*resumed, "1e-4"]) == 0
    assert main([*resumed, "1e-3"]) == 2
    assert main([*resumed, "1e-4", "--lr", "2e-3"]) == 2


def test_nice_on_mnist_defaults_to_the_papers_adam():
    from flowforge import runs

    config = runs.make_config(None, {"data": "mnist", "model": "nice"})
    assert (config["adam_betas"], config["adam_eps"]) == ([0.9, 0.99], 1e-4)
    assert runs.make_config(None, {"data": "mnist", "model": "realnvp"})["adam_betas"] is None
