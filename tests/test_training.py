"""Training by maximum likelihood, evaluation, checkpoints, saving and loading."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import flowforge as ff
from flowforge.datasets import Split
from flowforge.runtime.extras import MissingExtraError
from flowforge.training.loop import evaluate, fit

COVARIANCE = torch.tensor([[1.0, 0.8], [0.8, 1.0]])


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linalg.cholesky(COVARIANCE)
    return torch.randn(n, 2, generator=generator) @ scale.T + torch.tensor([1.0, -2.0])


def gaussian_entropy() -> float:
    return 0.5 * math.log(torch.det(2 * math.pi * math.e * COVARIANCE).item())


def small_flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.models.realnvp(dim=2, layers=4, hidden=(16, 16))


def test_fit_evaluate_sample_round_trip():
    """A correlated Gaussian: the fitted flow's test NLL approaches its known entropy."""
    train, val, test = gaussian_data(4000, 0), gaussian_data(1000, 1), gaussian_data(4000, 2)
    flow = small_flow()
    history = fit(flow, train, val, epochs=15, batch_size=128, lr=3e-3, progress=False)
    assert len(history) == 15 and history.best_epoch is not None
    assert history.epochs[-1]["train_nll"] < history.epochs[0]["train_nll"]
    report = evaluate(flow, test)
    assert report.n == 4000 and report.dim == 2 and report.bits_per_dim is None
    assert abs(report.nll - gaussian_entropy()) < 0.05, report
    samples = flow.sample(20_000)
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -2.0]), atol=0.12, rtol=0)
    torch.testing.assert_close(samples.T.cov(), COVARIANCE, atol=0.12, rtol=0)


def test_keep_best_restores_the_best_validation_epoch():
    """The flow starts as N(0, I); training on N(0, 0.3^2 I) narrows it, so its NLL on
    validation data from N(0, I) only gets worse: epoch 1 is the best, and patience 2 stops
    training after epoch 3."""
    train = 0.3 * torch.randn(4000, 2)
    val = torch.randn(1000, 2)
    flow = small_flow()
    initial = evaluate(flow, val).nll
    history = fit(flow, train, val, epochs=20, patience=2, lr=1e-3, progress=False)
    assert [r["val_nll"] for r in history.epochs] == sorted(r["val_nll"] for r in history.epochs)
    assert history.best_epoch == 1 and len(history) == 3
    assert history.stopped.startswith("early stop")
    assert evaluate(flow, val, seed=1).nll == pytest.approx(history.best_val_nll)
    assert history.best_val_nll > initial  # one epoch of training already hurts it


def test_discrete_data_is_dequantised_and_reported_in_bits_per_dim():
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 17, (600, 4), generator=generator).float()
    split = Split(levels, levels=17)
    flow = ff.models.realnvp(dim=4, layers=2, hidden=(8,))
    fit(flow, split, split, epochs=2, progress=False)
    report = evaluate(flow, split)
    assert report.bits_per_dim == pytest.approx((report.nll + 4 * math.log(17)) / (4 * math.log(2)))
    assert evaluate(flow, split).nll == report.nll  # the evaluation noise is seeded


def test_saved_flow_reloads_to_identical_log_probs(tmp_path):
    flow = small_flow()
    fit(flow, gaussian_data(500, 0), epochs=2, progress=False)
    ff.save(flow, tmp_path / "run")
    loaded = ff.load(tmp_path / "run")
    x = gaussian_data(100, 5)
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    assert loaded.config == flow.config


@pytest.mark.parametrize("builder", [ff.models.nice, ff.models.planar, ff.models.radial])
def test_every_builder_saves_and_loads(tmp_path, builder):
    torch.manual_seed(0)
    flow = builder(dim=3, layers=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ff.save(flow, tmp_path)
    loaded = ff.load(tmp_path)
    assert loaded.dtype == torch.float64
    x = torch.randn(10, 3, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))


def test_save_refuses_a_flow_without_config(tmp_path):
    flow = ff.Flow(ff.transforms.DiagonalScaling(2), ff.StandardNormal(2))
    with pytest.raises(ValueError, match="has no config"):
        ff.save(flow, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing model\.json, model\.safetensors"):
        ff.load(tmp_path / "nothing")


def test_resuming_from_a_checkpoint_equals_training_straight_through(tmp_path):
    train, val = gaussian_data(1000, 0), gaussian_data(200, 1)
    options = dict(batch_size=100, lr=3e-3, schedule="cosine", progress=False, seed=3)
    straight = small_flow()
    fit(straight, train, val, epochs=4, keep_best=False, **options)

    def interrupt(record):  # Ctrl-C during epoch 3: the checkpoint holds epochs 1-2
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    interrupted = small_flow()
    history = fit(
        interrupted,
        train,
        val,
        epochs=4,
        checkpoint=tmp_path,
        keep_best=False,
        callback=interrupt,
        **options,
    )
    assert history.stopped.startswith("interrupted")
    resumed = small_flow()  # a fresh process would rebuild the model like this
    history = fit(
        resumed, train, val, epochs=4, checkpoint=tmp_path, resume=True, keep_best=False, **options
    )
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_divergence_without_rollbacks_stops_with_a_clear_error_and_keeps_the_best_weights():
    flow = ff.models.nice(dim=2, layers=2, hidden=(8,))
    train = gaussian_data(512, 0)
    best = {}

    def explode(record):  # after epoch 1 (the best so far), break the weights
        best.update({k: v.clone() for k, v in flow.state_dict().items()})
        with torch.no_grad():
            flow.transform.transforms[-1].log_scale.fill_(1e4)

    with pytest.raises(ff.DivergenceError, match=r"loss became inf at epoch 2, step 1") as error:
        fit(flow, train, train, epochs=3, progress=False, callback=explode, rollbacks=0)
    assert isinstance(error.value, FloatingPointError)
    assert error.value.history.stopped == "diverged"
    assert error.value.history.best_epoch == 1
    for key, value in flow.state_dict().items():
        torch.testing.assert_close(value, best[key])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(batch_size=2.5), "batch_size must be a positive integer"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(schedule="linear"), "schedule must be 'cosine', 'plateau' or None"),
        (dict(clip=0), "clip must be a positive number"),
    ],
)
def test_bad_training_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(small_flow(), gaussian_data(10, 0), progress=False, **kwargs)


def test_bad_training_data():
    x = gaussian_data(10, 0)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="train contains NaN"):
        fit(small_flow(), x, progress=False)
    with pytest.raises(ValueError, match=r"train samples have shape \(3,\)"):
        fit(small_flow(), torch.randn(10, 3), progress=False)


def test_gaussian_baseline_matches_the_closed_form():
    train = gaussian_data(50_000, 0)
    baseline = ff.baselines.GaussianBaseline(train)
    report = evaluate(baseline, gaussian_data(50_000, 1))
    assert abs(report.nll - gaussian_entropy()) < 3 * report.nll_se + 1e-3


def test_same_seed_same_model_and_float64_training():
    train = gaussian_data(600, 0)
    flows = []
    for _ in range(2):
        flow = small_flow()
        fit(flow, train, epochs=2, seed=7, dtype=torch.float64, progress=False)
        flows.append(flow)
    assert flows[0].dtype == torch.float64
    for a, b in zip(flows[0].state_dict().values(), flows[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.extra("tensorboard")
def test_tensorboard_logs_each_epochs_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = gaussian_data(50, 0)
    history = fit(small_flow(), data, epochs=2, progress=False, tensorboard=tmp_path)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train_nll")]
    expected = [(r["epoch"], r["train_nll"]) for r in history.epochs]
    assert [step for step, _ in logged] == [step for step, _ in expected] == [1, 2]
    for (_, value), (_, want) in zip(logged, expected, strict=True):
        assert value == pytest.approx(want, rel=1e-6)  # stored as float32


def test_tensorboard_without_its_extra_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    expected = r"^fit\(tensorboard=...\) needs the tensorboard extra: pip install"
    with pytest.raises(MissingExtraError, match=expected):
        fit(small_flow(), gaussian_data(50, 0), epochs=1, progress=False, tensorboard=tmp_path)
    assert not any(tmp_path.iterdir())


def test_fit_and_fit_variational_take_a_device_name_as_the_command_line_does():
    """``device="auto"`` (CUDA where there is one, else the CPU) works from Python too, and a
    device the machine lacks is a one-line ValueError rather than torch's error."""
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    data = ff.datasets.load("two-moons", n=600, seed=0)
    ff.fit(flow, data.train, epochs=1, progress=False, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert flow.device.type == expected
    ff.fit_variational(
        flow, ff.targets.get("u1"), steps=2, batch_size=8, progress=False, device="auto"
    )
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: never there
    with pytest.raises(ValueError, match=f"{missing}. (was asked for|does not exist)"):
        ff.fit(flow, data.train, epochs=1, progress=False, device=missing)


def test_resume_from_a_directory_without_a_checkpoint_says_so_and_starts_afresh(tmp_path, caplog):
    data, typo = gaussian_data(50, 0), tmp_path / "typo"
    resumed = fit(small_flow(), data, epochs=1, progress=False, checkpoint=typo, resume=True)
    assert caplog.messages == [f"nothing to resume in {typo}: starting a new run"]
    fresh = fit(small_flow(), data, epochs=1, progress=False)
    assert resumed.epochs[0]["train_nll"] == fresh.epochs[0]["train_nll"]
    assert not any(e["event"] == "resumed" for e in resumed.events)


def test_resume_without_a_checkpoint_directory_is_refused():
    with pytest.raises(ValueError, match=r"^resume=True needs checkpoint=, the directory"):
        fit(small_flow(), gaussian_data(50, 0), epochs=1, progress=False, resume=True)
