"""Training that survives faults: divergence rollbacks, kills, signals, resumes, writes.

Each test here failed on flowforge 0.1 (see the README's fault table): a NaN mid-run ended
training, a diverged run exited 0, resumes only started at epoch boundaries and accepted
changed options, signals exited 0, and metrics.jsonl was rewritten in place.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

import flowforge as ff
from flowforge.cli import main
from flowforge.runtime import atomic, interrupts
from flowforge.training import checkpoint
from flowforge.training.divergence import DivergenceMonitor

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def correlated(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=generator) @ torch.tensor([[1.0, 0.6], [0.0, 0.5]])


def small_flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.models.realnvp(2, layers=4, hidden=(16, 16))


def same_weights(a: ff.Flow, b: ff.Flow) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


OPTIONS = dict(batch_size=50, lr=3e-3, progress=False, seed=3)


# --- divergence -----------------------------------------------------------------------------


class NaNOnce(torch.nn.Module):
    """A layer that passes its input through, but returns NaN on its ``at``-th call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, x, context=None):
        self.calls += 1
        if self.calls == self.at:
            x = x * math.nan
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z, context=None):
        return z, z.new_zeros(z.shape[0])


class SignalAt(NaNOnce):
    """A layer that sends this process a signal on its ``at``-th call, mid-step, as a
    ``kill`` from outside would (the handler runs at once, in the main thread)."""

    def __init__(self, at: int, number: int) -> None:
        super().__init__(at)
        self.number = number

    def forward(self, x, context=None):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.number)
        return x, x.new_zeros(x.shape[0])


def test_a_layer_that_produces_nan_mid_run_is_rolled_back_and_training_goes_on():
    flow = small_flow()
    layer = NaNOnce(at=60)  # in the second epoch (40 steps an epoch)
    flow.transform.transforms.insert(0, layer)
    history = ff.fit(flow, correlated(2000, 0), correlated(300, 1), epochs=3, **OPTIONS)
    rollbacks = [e for e in history.events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["epoch"] == 2 and rollbacks[0]["loss"] == "nan"
    assert rollbacks[0]["to_step"] == 50  # the last good state, kept every 25 steps
    assert history.stopped == "finished" and len(history.epochs) == 3
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    # the schedule goes on from half the rate it had reached
    assert history.epochs[1]["lr"] == pytest.approx(
        0.5 * 3e-3 * (1 + math.cos(math.pi * 80 / 120)) / 2
    )
    assert history.epochs[-1]["val_nll"] < 2.5


def test_rollbacks_run_out_into_a_divergence_error_with_the_last_good_weights():
    flow = small_flow()

    class AlwaysNaNAfter(NaNOnce):
        def forward(self, x, context=None):
            self.calls += 1
            return (x * math.nan if self.calls >= self.at else x), x.new_zeros(x.shape[0])

    flow.transform.transforms.insert(0, AlwaysNaNAfter(at=30))
    with pytest.raises(ff.DivergenceError, match=r"at epoch 1, step \d+ after 2 rollbacks") as e:
        ff.fit(flow, correlated(2000, 0), epochs=2, rollbacks=2, **OPTIONS)
    assert e.value.history.stopped == "diverged"
    assert [x["event"] for x in e.value.history.events] == ["rollback", "rollback", "diverged"]
    assert "kept the last good weights (global step 25)" in str(e.value)
    assert all(torch.isfinite(p).all() for p in flow.parameters())


def test_weights_that_turn_non_finite_are_rolled_back_before_they_are_saved(tmp_path):
    flow = small_flow()

    def poison(record):  # after validation, before the epoch's checkpoint
        if record["epoch"] == 1:
            with torch.no_grad():
                next(flow.parameters()).fill_(math.nan)

    history = ff.fit(
        flow, correlated(2000, 0), epochs=2, checkpoint=tmp_path, callback=poison, **OPTIONS
    )
    rollbacks = [e for e in history.events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] == 25
    _, tensors = checkpoint.read(tmp_path)
    assert all(t.isfinite().all() for k, t in tensors.items() if k.startswith("model."))
    assert history.stopped == "finished" and all(p.isfinite().all() for p in flow.parameters())


def test_an_exploding_loss_is_caught_relative_to_the_running_loss():
    monitor = DivergenceMonitor(threshold=10.0, warmup=5)
    losses = [2.0 - 0.01 * i + 0.02 * math.sin(i) for i in range(100)]
    assert all(monitor.check(loss) for loss in losses)  # a healthy run never trips it
    assert monitor.check(monitor.mean + 0.05)  # ordinary noise
    assert not monitor.check(monitor.mean + 5.0)  # an explosion
    assert not monitor.check(math.inf) and not monitor.check(math.nan)
    early = DivergenceMonitor(threshold=10.0, warmup=20)
    assert early.check(2.8) and not early.check(1e5)  # in the first steps, against the first
    assert DivergenceMonitor(threshold=None).check(1e30)  # finiteness only
    with pytest.raises(ValueError, match="divergence threshold must be a positive number"):
        DivergenceMonitor(threshold=-1.0)


def test_healthy_training_on_every_toy_never_rolls_back():
    for name in ("two-moons", "8gaussians", "checkerboard", "pinwheel"):
        data = ff.datasets.load(name, n=3000, seed=0)
        flow = small_flow()
        history = ff.fit(flow, data.train, data.val, epochs=2, batch_size=64, progress=False)
        assert not history.events, (name, history.events)


def test_lr_10_from_the_command_line_stops_clearly_with_finite_weights(tmp_path, capsys):
    out = tmp_path / "lr10"
    args = ["fit", "--data", "two-moons", "--model", "realnvp", "--lr", "10", "--n", "4000"]
    args += ["--epochs", "6", "--layers", "4", "--hidden", "32,32", "--batch-size", "64"]
    code = main([*args, "--out", str(out), "--no-progress", "--no-plots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith("flowforge fit: error: the training loss became")
    assert "after 5 rollbacks" in err[-1] and "epoch 1, step" in err[-1]
    flow = ff.load(out)
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert main(["eval", str(out)]) == 0
    assert math.isfinite(json.loads((out / "eval.json").read_text())["flow"]["nll"])


def test_a_non_finite_validation_nll_is_recorded_but_never_the_best():
    val = correlated(300, 1)
    val[0] = 1e30  # finite, but the flow gives it no density: log q = -inf
    flow = small_flow()
    history = ff.fit(flow, correlated(1000, 0), val, epochs=2, **OPTIONS)
    assert [r["val_nll"] for r in history.epochs] == [None, None]
    assert all(r["val_nll_not_finite"] in ("inf", "nan") for r in history.epochs)
    assert history.best_epoch is None and history.stopped == "finished"
    json.dumps(history.epochs, allow_nan=False)  # the metrics stay strict JSON


# --- mid-epoch checkpoints and resume --------------------------------------------------------


def test_a_signal_mid_epoch_checkpoints_and_the_resume_is_bit_identical(tmp_path):
    train, val = correlated(2000, 0), correlated(300, 1)
    straight = small_flow()
    ff.fit(straight, train, val, epochs=6, **OPTIONS)
    interrupted = small_flow()
    interrupted.transform.transforms.insert(0, SignalAt(at=100, number=signal.SIGTERM))
    history = ff.fit(interrupted, train, val, epochs=6, checkpoint=tmp_path, **OPTIONS)
    assert history.signal == signal.SIGTERM and history.stopped.startswith("interrupted by SIGTERM")
    metadata, _ = checkpoint.read(tmp_path)
    assert metadata["position"] == {**metadata["position"], "epoch": 2, "step": 18}
    resumed = small_flow()
    resumed.transform.transforms.insert(0, SignalAt(at=-1, number=signal.SIGTERM))  # no-op
    history = ff.fit(resumed, train, val, epochs=6, checkpoint=tmp_path, resume=True, **OPTIONS)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4, 5, 6]
    assert history.events[0]["event"] == "resumed" and history.stopped == "finished"
    assert same_weights(straight, resumed)


def written(run: Path) -> int | None:
    """When the run's checkpoint was last replaced (None: not yet)."""
    path = run / checkpoint.CHECKPOINT
    return path.stat().st_mtime_ns if path.exists() else None


FIT = [sys.executable, "-m", "flowforge", "fit", "--data", "two-moons", "--n", "20000"]
FIT += ["--epochs", "2", "--layers", "2", "--hidden", "16", "--batch-size", "32"]
FIT += ["--no-progress", "--no-plots", "--checkpoint-every", "5"]


def test_kills_at_random_times_then_resume_end_with_the_uninterrupted_weights(tmp_path):
    """SIGKILL (nothing can be saved) at random moments, even inside a checkpoint write; each
    relaunch with --resume loses at most 5 steps and the end is byte-identical."""
    straight = tmp_path / "straight"
    subprocess.run([*FIT, "--out", str(straight)], env=ENV, check=True, capture_output=True)
    run, rng, kills = tmp_path / "killed", random.Random(18), 0
    for _ in range(4):
        before = written(run)
        process = subprocess.Popen(
            [*FIT, "--out", str(run), "--resume"],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while written(run) == before and process.poll() is None:  # until it trains
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait(timeout=60)
        if process.returncode == 0:  # a fast machine finished the run between two kills
            break
        leftovers = [p.name for p in run.iterdir() if atomic.TEMPORARY_MARK in p.name]
        metadata, _ = checkpoint.read(run)  # whatever the moment, the checkpoint is whole
        assert metadata["format"] == checkpoint.FORMAT, leftovers
    final = subprocess.run(
        [*FIT, "--out", str(run), "--resume"], env=ENV, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    assert kills >= 2
    assert (run / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert not [p for p in run.iterdir() if atomic.TEMPORARY_MARK in p.name]  # orphans removed
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def fit_args(out: Path, *extra: str) -> list[str]:
    args = ["fit", "--data", "two-moons", "--n", "1500", "--epochs", "2", "--layers", "2"]
    return [*args, "--hidden", "8", "--out", str(out), "--no-progress", "--no-plots", *extra]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--layers", "3"], "--layers 2 -> 3"),
        (["--n", "1600"], "--n 1500 -> 1600"),
        (["--seed", "1"], "--seed 0 -> 1"),
        (["--batch-size", "128"], "--batch-size 256 -> 128"),
        (["--model", "maf"], "--model 'realnvp' -> 'maf'"),
        (["--model-arg", "scale_bound=2.0"], "--model-args"),
    ],
)
def test_resuming_with_options_that_change_the_run_is_refused(tmp_path, capsys, change, named):
    out = tmp_path / "run"
    assert main(fit_args(out)) == 0
    before = (out / "config.yaml").read_text(), (out / checkpoint.CHECKPOINT).read_bytes()
    capsys.readouterr()
    assert main([*fit_args(out, "--resume"), *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot resume {out}" in err and named in err
    assert before == ((out / "config.yaml").read_text(), (out / checkpoint.CHECKPOINT).read_bytes())


def test_the_api_refuses_changed_data_and_names_it(tmp_path):
    ff.fit(small_flow(), correlated(1000, 0), epochs=1, checkpoint=tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match=r"the train data changed \(1000 samples, now 900\)"):
        ff.fit(
            small_flow(), correlated(900, 0), epochs=1, checkpoint=tmp_path, resume=True, **OPTIONS
        )
    with pytest.raises(ValueError, match=r"the model changed \(layers 4 -> 2\)"):
        flow = ff.models.realnvp(2, layers=2, hidden=(16, 16))
        ff.fit(flow, correlated(1000, 0), epochs=1, checkpoint=tmp_path, resume=True, **OPTIONS)


def test_a_new_learning_rate_on_resume_is_applied_and_recorded(tmp_path):
    out = tmp_path / "run"
    assert main(fit_args(out, "--epochs", "3", "--schedule", "plateau")) == 0
    # a finished run resumed to more epochs, at a new rate
    assert (
        main(fit_args(out, "--resume", "--epochs", "4", "--lr", "5e-4", "--schedule", "plateau"))
        == 0
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4] and metrics[-1]["lr"] == pytest.approx(
        5e-4
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 5e-4
    events = checkpoint.read(out)[0]["history"]["events"]
    assert {"event": "lr changed", "from": 1e-3, "to": 5e-4, "epoch": 4} in events


def test_a_finished_cosine_run_resumed_to_more_epochs_restarts_its_schedule(tmp_path):
    train = correlated(1000, 0)
    ff.fit(small_flow(), train, epochs=2, checkpoint=tmp_path, **OPTIONS)
    history = ff.fit(small_flow(), train, epochs=4, checkpoint=tmp_path, resume=True, **OPTIONS)
    rates = [r["lr"] for r in history.epochs]
    assert rates[1] == pytest.approx(0.0, abs=1e-12)  # the first run ended its cosine at 0
    assert rates[2] == pytest.approx(3e-3 / 2)  # then a new cosine from lr over 2 epochs
    assert rates[3] == pytest.approx(0.0, abs=1e-12)
    assert {"event": "epochs changed", "from": 2, "to": 4} in history.events


def test_an_interrupted_cosine_run_resumed_to_more_epochs_decays_from_where_it_was(tmp_path):
    train = correlated(1000, 0)

    def stop(record):  # during epoch 2's end: the checkpoint holds epoch 1
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    ff.fit(small_flow(), train, epochs=4, checkpoint=tmp_path, callback=stop, **OPTIONS)
    history = ff.fit(small_flow(), train, epochs=8, checkpoint=tmp_path, resume=True, **OPTIONS)
    rate = 3e-3 * (1 + math.cos(math.pi * 1 / 4)) / 2  # where the 4-epoch cosine stood
    assert history.epochs[1]["lr"] == pytest.approx(rate * (1 + math.cos(math.pi / 7)) / 2)
    assert history.epochs[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resuming_from_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(out)) == 0
    path = out / checkpoint.CHECKPOINT
    whole = path.read_bytes()
    for broken in (whole[: len(whole) // 2], b"", b"\x00" * 64, whole[:8] + b"{}" + whole[10:]):
        path.write_bytes(broken)
        capsys.readouterr()
        assert main(fit_args(out, "--resume")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "checkpoint.safetensors" in err, err
        assert "Traceback" not in err


# --- signals from the command line ----------------------------------------------------------

SLOW = """
import sys, time
import flowforge.runs.density as runs  # where fit_run looks these names up
from flowforge.cli import main
phase = sys.argv[1]
def slow(function):
    def wrapper(*args, **kwargs):
        print("PHASE", flush=True)
        time.sleep(30)
        return function(*args, **kwargs)
    return wrapper
if phase == "setup":
    runs.load_data = slow(runs.load_data)
elif phase == "plotting":
    runs.plot_run = slow(runs.plot_run)
elif phase == "saving":
    import flowforge.flows.io as io
    original = io.save
    def save(flow, out):
        print("PHASE", flush=True)
        time.sleep(1.5)
        return original(flow, out)
    runs.io.save = save
raise SystemExit(main(sys.argv[2:]))
"""


def run_until(tmp_path: Path, phase: str, args: list[str], signals: list[int]):
    """Start ``flowforge`` with ``phase`` slowed down; send ``signals`` once it is there."""
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(SLOW))
    process = subprocess.Popen(
        [sys.executable, str(script), phase, *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "PHASE"
    for number in signals:
        time.sleep(0.3)
        process.send_signal(number)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.parametrize(
    ("phase", "sent", "code", "says"),
    [
        ("setup", signal.SIGINT, 130, "stopped by SIGINT"),
        ("setup", signal.SIGTERM, 143, "stopped by SIGTERM"),
        ("plotting", signal.SIGTERM, 143, "model saved, plots skipped"),
        ("saving", signal.SIGINT, 130, "stopped by SIGINT"),
    ],
)
def test_a_signal_in_any_phase_exits_128_plus_its_number_with_one_line(
    tmp_path, phase, sent, code, says
):
    out = tmp_path / "run"
    args = ["fit", "--data", "two-moons", "--n", "600", "--epochs", "1", "--layers", "2"]
    args += ["--hidden", "8", "--out", str(out), "--no-progress"]
    returncode, stderr = run_until(tmp_path, phase, args, [sent])
    assert returncode == code, stderr
    assert len(stderr.strip().splitlines()) == 1 and says in stderr and "Traceback" not in stderr
    if phase != "setup":  # the model is whole: the save finished before the exit
        log_p = ff.load(out).log_prob(torch.zeros(3, 2))
        assert log_p.shape == (3,) and torch.isfinite(log_p).all()


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_python_imports_torch_exits_quietly(tmp_path, sent, code):
    command = [sys.executable, "-m", "flowforge", *fit_args(tmp_path / "run")]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)  # inside `import torch` (about 2 s)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code and b"Traceback" not in stderr, stderr


def test_a_second_signal_exits_at_once_without_corrupting_a_file(tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--data", "two-moons", "--n", "600", "--epochs", "1", "--layers", "2"]
    args += ["--hidden", "8", "--out", str(out), "--no-progress", "--no-plots"]
    started = time.monotonic()
    returncode, stderr = run_until(tmp_path, "saving", args, [signal.SIGTERM, signal.SIGTERM])
    assert returncode == 143 and "second SIGTERM: exiting at once" in stderr
    assert time.monotonic() - started < 10
    assert not [p for p in out.iterdir() if atomic.TEMPORARY_MARK in p.name]
    state, _ = checkpoint.read(out)  # whole, and the run's: one finished epoch
    assert [record["epoch"] for record in state["history"]["epochs"]] == [1]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()] == [1]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 1
    assert not (out / "model.safetensors").exists()  # the save never began: nothing half-done


def test_sigterm_mid_training_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "flowforge", *fit_args(out, "--epochs", "100000")]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists():
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.05)
    time.sleep(0.1)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert b"stopped by SIGTERM; interrupted by SIGTERM at epoch" in stderr
    assert b"continue with --resume" in stderr
    assert ff.load(out).log_prob(torch.zeros(3, 2)).isfinite().all()
    done = len(checkpoint.read(out)[0]["history"]["epochs"])
    assert main(fit_args(out, "--resume", "--epochs", str(done + 1))) == 0


# --- atomic, durable writes -----------------------------------------------------------------


def test_every_run_file_is_written_through_a_temporary_file_fsync_and_rename(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (replaced.append(Path(b).name), real_replace(a, b))[1]
    )
    out = tmp_path / "run"
    assert main(fit_args(out)[:-1]) == 0  # with plots
    written = {p.name for p in out.iterdir() if p.is_file()} | {
        f"plots/{p.name}" for p in (out / "plots").iterdir()
    }
    assert {Path(name).name for name in written} <= set(replaced), set(written) - set(replaced)
    assert len(synced) >= len(replaced)


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic.write_text(path, "old\n")

    class WriterError(Exception):
        pass

    with pytest.raises(WriterError), atomic.replacing(path) as temporary:
        temporary.write_text("half")
        raise WriterError
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    (tmp_path / f".metrics{atomic.TEMPORARY_MARK}abc.jsonl").write_text("orphan")
    (tmp_path / "model.safetensors.tmp").write_text("orphan of flowforge 0.1")
    assert len(atomic.remove_orphans(tmp_path)) == 2 and list(tmp_path.iterdir()) == [path]


def test_interrupts_defer_a_signal_to_the_end_of_a_block():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted) as stopped, interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished = True
        assert finished and stopped.value.exit_code == 130
        with interrupts.deferred():  # raised once: the saves that follow run to their end
            pass
    assert signal.getsignal(signal.SIGINT) is before
