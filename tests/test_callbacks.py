"""Callbacks: a user's hooks into fit's loop, and fit's own options built from them."""

from __future__ import annotations

import json

import pytest
import torch

import flowforge as ff
from flowforge.training.callbacks import Callback


def small_flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.models.realnvp(dim=2, layers=2, hidden=(8,))


def data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 0.5 + 1.0


class Recorder(Callback):
    """Records every hook call; stops after epoch ``stop_at`` if given."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_fit_start(self, run):
        self.calls.append(("start", run.epoch, run.global_step))

    def on_step_end(self, run, loss):
        assert isinstance(loss, float) and loss == loss
        self.calls.append(("step", run.global_step))

    def on_epoch_end(self, run, record):
        self.calls.append(("epoch", record["epoch"], record["val_nll"] is not None))
        if record["epoch"] == self.stop_at:
            run.stop("stopped by Recorder")

    def on_fit_end(self, run):
        self.calls.append(("end", len(run.history.epochs)))


def test_a_callback_sees_every_step_and_epoch():
    recorder = Recorder()
    ff.fit(small_flow(), data(300, 0), data(100, 1), epochs=3, batch_size=100,
           callbacks=[recorder], progress=False)  # fmt: skip
    steps = [call[1] for call in recorder.calls if call[0] == "step"]
    epochs = [call[1:] for call in recorder.calls if call[0] == "epoch"]
    assert recorder.calls[0] == ("start", 0, 0) and recorder.calls[-1] == ("end", 3)
    assert steps == list(range(1, 10)) and epochs == [(1, True), (2, True), (3, True)]
    assert recorder.calls.index(("epoch", 1, True)) == 4  # after the epoch's three steps


def test_a_callback_stops_training_and_the_checkpoint_says_so(tmp_path):
    recorder = Recorder(stop_at=2)
    history = ff.fit(small_flow(), data(300, 0), data(100, 1), epochs=10, batch_size=100,
                     callbacks=recorder, checkpoint=tmp_path, progress=False)  # fmt: skip
    assert len(history) == 2 and history.stopped == "stopped by Recorder"
    metadata, _ = ff.training.checkpoint.read(tmp_path)
    assert metadata["history"]["stopped"] == "stopped by Recorder"
    assert recorder.calls[-1] == ("end", 2)


def test_an_early_stopped_run_stays_stopped_on_resume(tmp_path):
    """Training on N(0, 0.3^2) only worsens the NLL of N(0, 1): patience 2 stops after epoch
    3, and a resume with the same patience trains no further."""
    train, val = 0.3 * torch.randn(2000, 2), torch.randn(500, 2)
    options = dict(epochs=20, patience=2, checkpoint=tmp_path, progress=False)
    history = ff.fit(small_flow(), train, val, **options)
    assert len(history) == 3 and history.stopped.startswith("early stop")
    recorder = Recorder()
    history = ff.fit(small_flow(), train, val, resume=True, callbacks=[recorder], **options)
    assert len(history) == 3 and history.stopped.startswith("early stop")
    assert recorder.calls == [("start", 3, 3 * 8), ("end", 3)]  # 8 steps of 256 an epoch


def test_the_metrics_file_is_written_by_its_callback(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recorder = Recorder(stop_at=2)
    ff.fit(small_flow(), data(300, 0), data(100, 1), epochs=5, batch_size=100,
           metrics=path, callbacks=[recorder], progress=False)  # fmt: skip
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize("callbacks", [print, [Recorder(), "x"], 3])
def test_callbacks_that_are_not_callbacks_are_one_line_errors(callbacks):
    with pytest.raises(
        TypeError, match=r"callbacks must be flowforge\.training\.Callback"
    ) as caught:
        ff.fit(small_flow(), data(100, 0), epochs=1, callbacks=callbacks, progress=False)
    assert "\n" not in str(caught.value)


class VariationalRecorder(Callback):
    """Records fit_variational's hook calls; stops at the record of step ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_fit_start(self, run):
        self.calls.append(("start", run.global_step))

    def on_step_end(self, run, loss):
        assert isinstance(loss, float) and loss == loss
        self.calls.append(("step", run.global_step))

    def on_epoch_end(self, run, record):
        self.calls.append(("record", record["step"]))
        if record["step"] == self.stop_at:
            run.stop("stopped by VariationalRecorder")

    def on_fit_end(self, run):
        self.calls.append(("end", len(run.history.records)))


def variational(**options) -> ff.inference.variational.VariationalHistory:
    torch.manual_seed(0)
    flow = ff.models.planar(2, layers=2)
    return ff.fit_variational(flow, ff.targets.get("u1"), batch_size=16, log_every=5,
                              progress=False, **options)  # fmt: skip


def test_fit_variational_calls_the_same_hooks():
    recorder = VariationalRecorder()
    history = variational(steps=20, callbacks=[recorder])
    steps = [call[1] for call in recorder.calls if call[0] == "step"]
    records = [call[1] for call in recorder.calls if call[0] == "record"]
    assert recorder.calls[0] == ("start", 0) and recorder.calls[-1] == ("end", 4)
    assert steps == list(range(1, 21)) and records == [5, 10, 15, 20]
    assert recorder.calls.index(("record", 5)) == 6  # after the record's five steps
    assert history.stopped == "finished"


def test_a_callback_stops_fit_variational_at_a_record():
    recorder = VariationalRecorder(stop_at=10)
    history = variational(steps=100, callbacks=recorder)
    assert [r["step"] for r in history.records] == [5, 10]
    assert history.stopped == "stopped by VariationalRecorder"
    assert recorder.calls[-1] == ("end", 2)


class CheckpointWatcher(Callback):
    """At each epoch's end: run.epoch, and how many epochs the checkpoint on disk holds."""

    def __init__(self, directory) -> None:
        self.directory, self.seen = directory, []

    def on_epoch_end(self, run, record):
        metadata, _ = ff.training.checkpoint.read(self.directory)
        self.seen.append((record["epoch"], run.epoch, len(metadata["history"]["epochs"])))


def test_the_checkpoint_is_written_after_the_users_callbacks(tmp_path):
    """fit's Checkpointing runs last: a user's on_epoch_end sees the previous epoch's
    checkpoint, and run.epoch counts the epochs finished."""
    ff.fit(small_flow(), data(200, 0), epochs=1, batch_size=100, checkpoint=tmp_path,
           checkpoint_every=1, progress=False)  # fmt: skip
    watcher = CheckpointWatcher(tmp_path)
    ff.fit(small_flow(), data(200, 0), epochs=3, batch_size=100, checkpoint=tmp_path,
           resume=True, callbacks=[watcher], progress=False)  # fmt: skip
    assert watcher.seen == [(2, 2, 1), (3, 3, 2)]
