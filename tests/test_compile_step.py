"""``fit(compile="auto")``: the training step is compiled when the planned steps repay the
compile time, stays eager on a short run, and falls back to eager steps on a failure."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.training import compiling


def moons(n: int = 1200):
    return ff.datasets.load("two-moons", n=n)


def train(mode, dtype=torch.float32, epochs=2, **options):
    torch.manual_seed(0)
    flow = ff.models.realnvp(2, layers=2, hidden=(16,))
    data = moons()
    history = ff.fit(
        flow,
        data.train,
        data.val,
        epochs=epochs,
        batch_size=64,
        progress=False,
        compile=mode,
        dtype=dtype,
        **options,
    )
    return flow, history


@pytest.mark.parametrize(
    ("steps", "eager_seconds", "expected"),
    [(100, 0.005, False), (10**6, 0.005, True), (10**5, 0.001, False), (10**5, 0.01, True)],
)
def test_compiling_pays_off_when_the_saving_beats_the_cost(steps, eager_seconds, expected):
    saving = steps * eager_seconds * (1 - 1 / compiling.EXPECTED_GAIN)
    assert (saving > compiling.MARGIN * compiling.COMPILE_SECONDS) is expected
    assert compiling.pays_off(steps, eager_seconds) is expected


def test_a_short_run_stays_eager(monkeypatch):
    asked = []
    real = compiling.pays_off
    monkeypatch.setattr(compiling, "pays_off", lambda *args: asked.append(args) or real(*args))
    _, history = train("auto")
    ((steps_left, eager_seconds),) = asked  # decided once, after the warm-up steps
    assert steps_left == 30 - compiling.WARMUP_STEPS and 0 < eager_seconds < 1
    assert history.events == []  # stayed eager: nothing happened to record


def test_a_long_run_compiles_and_trains_as_the_eager_step_does(monkeypatch):
    """With the compile cost taken as nothing, every run repays it: "auto" compiles, and
    the compiled steps give the eager run's parameters up to float64 rounding amplified
    by ~60 Adam steps."""
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    compiled, history = train("auto", torch.float64)
    decided = [e for e in history.events if e["event"].startswith("compile")]
    assert [e["event"] for e in decided] in (["compiled"], ["compile reverted"]), decided
    assert decided[0]["compile_s"] > 0 and decided[0]["compiled_ms"] > 0
    eager, _ = train(False, torch.float64)
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_a_failed_compilation_falls_back_to_the_eager_step(monkeypatch, caplog):
    def broken(module, **_):
        def call(*_inputs):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    fallen, history = train(True)
    (event,) = history.events
    assert event == {"event": "compile failed", "error": "RuntimeError: no C++ compiler found"}
    lines = caplog.messages  # one warning through logging
    assert lines == [
        "flowforge fit: torch.compile failed (RuntimeError: no C++ compiler found); training "
        "continues without compiling"
    ]
    eager, _ = train(False)  # the failed call changed nothing: the eager run, bit for bit
    for a, b in zip(fallen.parameters(), eager.parameters(), strict=True):
        assert torch.equal(a, b)


def test_auto_stays_eager_for_an_ode_solve(monkeypatch):
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    torch.manual_seed(0)
    flow = ff.models.cnf(2, hidden=(8,))
    data = moons(600)
    history = ff.fit(flow, data.train, epochs=1, batch_size=64, progress=False)
    assert history.events == []  # compiled, it would say so


@pytest.mark.parametrize("mode", ["yes", 1, None])
def test_compile_takes_auto_true_or_false(mode):
    with pytest.raises(ValueError, match=r"compile must be 'auto', True or False, got"):
        train(mode)


@pytest.mark.slow
def test_a_compiled_run_resumes(tmp_path, monkeypatch):
    """A run stopped after its first epoch and resumed with a compiled step ends where the
    uninterrupted compiled run does (float64, up to the rounding of the compiled graphs)."""
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    options = {"dtype": torch.float64, "schedule": None}  # a constant rate: more epochs alike
    whole, _ = train(True, epochs=2, **options)
    train(True, epochs=1, checkpoint=tmp_path, **options)
    resumed, history = train(True, epochs=2, checkpoint=tmp_path, resume=True, **options)
    assert any(e["event"] == "compiled" for e in history.events)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
