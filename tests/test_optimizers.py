"""`fit` with the user's own optimizer and learning-rate scheduler (issue 38)."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.training.checkpoint import CheckpointError

N = 256


def data(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 2, generator=generator, dtype=torch.float64)
    return torch.stack([x[:, 0], 0.5 * x[:, 1] + x[:, 0] ** 2], 1)


def flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.models.realnvp(dim=2, layers=2, hidden=(8,)).double()


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.05, momentum=0.9)


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def test_the_users_sgd_and_step_lr_are_what_trains():
    """One full batch a step: fit's parameters are those of the plain SGD loop with the same
    StepLR, step for step (float64; only the order of the batch's sum differs)."""
    x = data()
    trained = flow()
    history = ff.fit(
        trained, x, epochs=6, batch_size=N, optimizer=sgd, scheduler=step_lr, progress=False
    )
    reference = flow()
    optimizer = sgd(reference.parameters())
    scheduler = step_lr(optimizer)
    for _ in range(6):
        optimizer.zero_grad()
        (-reference.log_prob(x).mean()).backward()
        optimizer.step()
        scheduler.step()
    for a, b in zip(trained.parameters(), reference.parameters(), strict=True):
        # a sum of N float64 terms in another order: each of the 6 steps differs by ~N ulp
        # of the parameters' scale (about 1) at most
        tolerance = N * 6 * torch.finfo(torch.float64).eps
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert [r["lr"] for r in history.epochs] == [0.05, 0.025, 0.025, 0.0125, 0.0125, 0.00625]
    start = flow()  # and training moved them
    assert any(
        not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters(), strict=True)
    )


def test_a_built_optimizer_and_scheduler_are_used_as_given():
    model = flow()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    history = ff.fit(
        model,
        data(),
        epochs=2,
        batch_size=128,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=False,
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9**4)
    assert history.epochs[0]["lr"] == pytest.approx(0.01 * 0.9**2)


def test_the_users_optimizer_alone_gets_the_cosine_schedule():
    model = flow()
    history = ff.fit(model, data(), epochs=2, batch_size=N, optimizer=sgd, progress=False)
    assert history.epochs[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + 0))  # cos(pi/2) = 0
    assert history.epochs[1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_plateau_scheduler_is_stepped_with_the_validation_nll():
    """Training on N(0, 0.3^2) makes the NLL of N(0, 1) data worse every epoch: with
    patience 0 the user's ReduceLROnPlateau halves the rate after every epoch but the first
    (an epoch records the rate it trained with)."""
    torch.manual_seed(0)
    model = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    history = ff.fit(
        model,
        0.3 * torch.randn(1024, 2),
        torch.randn(512, 2),
        epochs=4,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
        progress=False,
    )
    assert [r["lr"] for r in history.epochs] == pytest.approx([1e-2, 1e-2, 5e-3, 2.5e-3])


def interrupt_at(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise KeyboardInterrupt  # fit checkpoints after the step under way

    return callback


@pytest.mark.parametrize("every", [None, 3], ids=["epoch-end", "mid-epoch"])
def test_a_run_with_the_users_sgd_and_step_lr_resumes_bit_identically(tmp_path, every):
    options = dict(
        epochs=5, batch_size=64, optimizer=sgd, scheduler=step_lr, progress=False, seed=1
    )
    x = data()
    straight = flow()
    ff.fit(straight, x, **options)
    stopped = flow()
    history = ff.fit(
        stopped,
        x,
        checkpoint=tmp_path,
        checkpoint_every=every,
        callback=interrupt_at(2),
        **options,
    )
    assert history.stopped.startswith("interrupted")
    resumed = flow()
    history = ff.fit(resumed, x, checkpoint=tmp_path, resume=True, **options)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4, 5]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resuming_with_another_optimizer_is_refused(tmp_path):
    x = data()
    ff.fit(flow(), x, epochs=1, optimizer=sgd, checkpoint=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"optimizer was 'torch\.optim\.sgd\.SGD' and is now"):
        ff.fit(flow(), x, epochs=2, checkpoint=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"optimizer": "sgd"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"optimizer": lambda p: None}, TypeError, r"optimizer\(parameters\) returned a NoneType"),
        (
            {"optimizer": torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)},
            ValueError,
            "holds parameters that are not the flow's",
        ),
        ({"optimizer": sgd, "lr": 0.1}, ValueError, "set them on your optimizer"),
        ({"optimizer": sgd, "weight_decay": 0.1}, ValueError, "set them on your optimizer"),
        ({"scheduler": 3}, TypeError, "scheduler must be a learning-rate scheduler"),
        ({"scheduler": lambda o: o}, TypeError, r"scheduler\(optimizer\) returned a SGD|Adam"),
        (
            {"scheduler": step_lr(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))},
            ValueError,
            "belongs to another optimizer",
        ),
        ({"scheduler": step_lr, "schedule": "plateau"}, ValueError, "not both"),
    ],
)
def test_bad_optimizers_and_schedulers_are_one_line_errors(options, error, message):
    with pytest.raises(error, match=message) as caught:
        ff.fit(flow(), data(), epochs=1, progress=False, **options)
    assert "\n" not in str(caught.value)


def test_an_optimizer_whose_settings_are_not_json_is_refused_before_training(tmp_path):
    def tensor_rate(parameters):
        return torch.optim.Adam(parameters, lr=torch.tensor(1e-3))

    model = flow()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"cannot store the optimizer's state \(Adam\)"):
        ff.fit(model, data(), epochs=1, optimizer=tensor_rate, checkpoint=tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fit_variational_takes_the_users_optimizer_and_scheduler():
    """Reverse KL to N(1, 0.5^2 I) with SGD and a StepLR of 50 steps: the records' rates
    are StepLR's, and the flow moves towards the target."""
    target = torch.distributions.Independent(
        torch.distributions.Normal(torch.ones(2), 0.5 * torch.ones(2)), 1
    )
    torch.manual_seed(0)
    model = ff.models.realnvp(dim=2, layers=2, hidden=(8,), base="diag-normal")
    history = ff.fit_variational(
        model,
        target,
        steps=200,
        batch_size=64,
        log_every=50,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=50, gamma=0.5),
        progress=False,
    )
    assert [r["lr"] for r in history.records] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    assert history.records[-1]["elbo"] > history.records[0]["elbo"]
    with pytest.raises(ValueError, match="ReduceLROnPlateau steps on a validation loss"):
        ff.fit_variational(
            model,
            target,
            steps=10,
            scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau,
            progress=False,
        )
