"""``fit(ema=d)``: the moving average of the weights follows its recursion, is what fit
evaluates and leaves in the flow, and is checkpointed so that a resume is bit-identical."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.training.averaging import WeightAverage


def test_the_average_follows_its_recursion():
    flow = ff.models.realnvp(2, layers=1, hidden=(4,))
    average = WeightAverage(flow, decay=0.9)
    expected = None
    for t in range(1, 40):
        with torch.no_grad():
            for p in flow.parameters():
                p.normal_()
        current = [p.detach().clone() for p in flow.parameters()]
        average.update()
        d = min(0.9, (1 + t) / (10 + t))
        if t > 1:
            current = [d * e + (1 - d) * c for e, c in zip(expected, current, strict=True)]
        expected = current
    for got, want in zip(average.flow().parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # float32, 40 lerps


def fit(ema, epochs=3, **options):
    torch.manual_seed(0)
    flow = ff.models.realnvp(2, layers=2, hidden=(16,))
    data = ff.datasets.load("two-moons", n=1500, seed=0)
    history = ff.fit(
        flow,
        data.train,
        data.val,
        epochs=epochs,
        batch_size=64,
        progress=False,
        ema=ema,
        **options,
    )
    return flow, history, data


def test_fit_evaluates_and_keeps_the_average():
    flow, history, data = fit(0.95)
    best = history.epochs[history.best_epoch - 1]["val_nll"]
    assert ff.training.evaluate(flow, data.val, seed=1).nll == pytest.approx(best, rel=1e-6)
    plain, plain_history, _ = fit(None)
    train_nll = [r["train_nll"] for r in history.epochs]
    assert train_nll == [r["train_nll"] for r in plain_history.epochs]  # the same training
    assert any(
        not torch.equal(a, b) for a, b in zip(flow.parameters(), plain.parameters(), strict=True)
    )


def test_a_resumed_run_with_an_average_is_bit_identical(tmp_path):
    options = {"schedule": None}  # a constant rate: 2 + 2 epochs are 4
    straight, _, _ = fit(0.95, epochs=4, keep_best=False, **options)
    fit(0.95, epochs=2, checkpoint=tmp_path, keep_best=False, **options)
    resumed, _, _ = fit(
        0.95, epochs=4, checkpoint=tmp_path, resume=True, keep_best=False, **options
    )
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"cannot resume .* ema"):
        fit(0.9, epochs=5, checkpoint=tmp_path, resume=True, **options)


@pytest.mark.parametrize("ema", [0, 1, 1.5, True, "0.9"])
def test_ema_is_a_decay_in_the_open_unit_interval(ema):
    with pytest.raises(ValueError, match=r"ema must be a decay in \(0, 1\) such as 0\.99 or None"):
        fit(ema, epochs=1)


def test_a_rollback_restarts_the_average_from_the_good_weights(monkeypatch):
    from tests.test_faults import OPTIONS, NaNOnce, correlated, small_flow

    restarts = []
    real = WeightAverage.restart
    monkeypatch.setattr(WeightAverage, "restart", lambda self: restarts.append(1) or real(self))
    flow = small_flow()
    flow.transform.transforms.insert(0, NaNOnce(at=60))  # a NaN loss in the second epoch
    history = ff.fit(flow, correlated(2000, 0), correlated(300, 1), epochs=3, ema=0.9, **OPTIONS)
    assert [e["event"] for e in history.events] == ["rollback"] and restarts == [1]
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert history.epochs[-1]["val_nll"] < 2.5  # the average of the weights after it
