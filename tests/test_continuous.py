"""Continuous flows (`flowforge.transforms.ContinuousFlow`, ``ff.models.cnf``): the exact trace
is the autograd Jacobian's, Hutchinson's estimate is unbiased, a linear field gives the
closed-form map and density, the density integrates to one, a point's log-density does not
depend on its batch, and the model saves, loads and trains like the other flows.

Float64 throughout; each tolerance follows from the solver's (rtol = atol = tau on each
sample's error norm gives a global error of a few tau for these smooth, short solves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.nn import TimeMLP
from flowforge.transforms import ContinuousFlow
from flowforge.transforms.continuous import (
    SolverError,
    exact_trace,
    hutchinson_trace,
    solver,
)

from cases import randomize

CONTINUOUS_BUILDERS = {
    "cnf": lambda **kw: ff.models.cnf(dim=2, hidden=(16, 16), **kw),
}


def random_field(dim: int = 2, context_dim: int = 0, seed: int = 0, scale: float = 0.5) -> TimeMLP:
    torch.manual_seed(seed)
    return randomize(
        TimeMLP(dim, (16, 16), context_dim=context_dim), seed=seed, scale=scale
    ).double()


class LinearField(nn.Module):
    """v(x, t) = A x: the time-1 map is expm(A), its log-determinant tr(A)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context=None) -> torch.Tensor:
        return x @ self.matrix.T


def test_the_exact_trace_is_the_autograd_jacobians():
    field = random_field(3, context_dim=2)
    x, t, c = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, dtype=torch.float64), None
    c = torch.randn(6, 2, dtype=torch.float64)
    v, trace = exact_trace(field, x, t, c)
    torch.testing.assert_close(v, field(x, t, c), atol=1e-14, rtol=0)
    for i in range(6):
        jacobian = torch.autograd.functional.jacobian(lambda y, i=i: field(y, t[i], c[i]), x[i])
        torch.testing.assert_close(trace[i], jacobian.trace(), atol=1e-13, rtol=0)
    assert trace.abs().min() > 1e-3, "a random field must not have a zero trace"


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinsons_estimate_is_unbiased(noise):
    field = random_field(4)
    x = torch.randn(1, 4, dtype=torch.float64).expand(20_000, 4)
    t = torch.full((20_000,), 0.4, dtype=torch.float64)
    probes = torch.randn(20_000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    probes = probes.sign() if noise == "rademacher" else probes
    _, estimates = hutchinson_trace(field, x, t, None, probes)
    _, exact = exact_trace(field, x[:1], t[:1], None)
    error = estimates.mean() - exact[0]
    assert error.abs() < 4 * estimates.std() / math.sqrt(len(estimates)), float(error)


def test_a_linear_field_gives_the_matrix_exponential_and_its_trace():
    matrix = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)
    flow = ContinuousFlow(LinearField(matrix), rtol=1e-10, atol=1e-10)
    z = torch.randn(5, 2, dtype=torch.float64)
    x, logdet = flow.inverse(z)
    torch.testing.assert_close(x, z @ torch.linalg.matrix_exp(matrix).T, atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet, matrix.trace().expand(5), atol=1e-8, rtol=0)
    back, logdet_back = flow(x)
    torch.testing.assert_close(back, z, atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet_back, -logdet, atol=1e-8, rtol=0)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_inverse_of_forward_is_the_identity_to_the_solvers_tolerance(trace):
    flow = ContinuousFlow(random_field(3), trace=trace, rtol=1e-9, atol=1e-9)
    x = torch.randn(8, 3, dtype=torch.float64)
    z, logdet = flow(x)
    assert (z - x).abs().max() > 0.1, "a random field must move the points"
    back, logdet_back = flow.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    if trace == "exact":  # Hutchinson's noise differs between the two solves
        torch.testing.assert_close(logdet_back, -logdet, atol=1e-6, rtol=0)


def test_the_log_determinant_is_the_autograd_jacobians_slogdet():
    flow = ContinuousFlow(random_field(2, context_dim=1), rtol=1e-10, atol=1e-10)
    x, c = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    _, logdet = flow(x, c)
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(
            lambda y, i=i: flow(y[None], c[i : i + 1])[0][0], x[i]
        )
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jacobian)[1], atol=1e-7, rtol=0)


def test_the_density_integrates_to_one():
    torch.manual_seed(0)
    flow = randomize(ff.models.cnf(2, hidden=(16, 16)), seed=0, scale=0.3).double()
    half_width, points = 7.0, 141
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = flow.log_prob(torch.stack((xx, yy), dim=-1).reshape(-1, 2)).exp()
    density = density.reshape(points, points)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid).item()
    assert abs(mass - 1) < 1e-2, mass
    assert density.max() * (grid[1] - grid[0]) ** 2 < 0.05, "too peaked for this grid"


def test_a_points_log_density_does_not_depend_on_its_batch():
    """Each sample has its own step sizes: alone or among 1,000 others, the same answer."""
    torch.manual_seed(0)
    flow = randomize(ff.models.cnf(2, hidden=(32, 32)), seed=0, scale=0.4).double()
    crowd = 3 * torch.randn(1001, 2, dtype=torch.float64)
    with torch.no_grad():
        together = flow.log_prob(crowd)
        alone = torch.stack([flow.log_prob(crowd[i : i + 1])[0] for i in (0, 500, 1000)])
        half = flow.log_prob(crowd[500:])
    assert (together[[0, 500, 1000]] - alone).abs().max() < 1e-5
    assert (together[500:] - half).abs().max() < 1e-5


def test_nfe_is_counted_for_the_solve_and_its_backward_pass():
    flow = ContinuousFlow(random_field(2), method="tsit5", steps=4)
    flow.double()
    z, logdet = flow(torch.randn(3, 2, dtype=torch.float64))
    # tsit5: one evaluation at the start, then 6 new stages a step (the 7th is the next's 1st)
    assert flow.nfe == {"forward": 1 + 4 * 6, "backward": 0}
    (z.sum() + logdet.sum()).backward()
    assert flow.nfe == {"forward": 25, "backward": 25}
    adaptive = ContinuousFlow(random_field(2))
    adaptive.double()(torch.randn(3, 2, dtype=torch.float64))
    assert adaptive.nfe["forward"] > 8


def test_fixed_steps_converge_to_the_adaptive_solve():
    field = random_field(2)
    x = torch.randn(4, 2, dtype=torch.float64)
    reference = ContinuousFlow(field, rtol=1e-10, atol=1e-10)(x)[1]
    errors = [
        (ContinuousFlow(field, method="heun", steps=n)(x)[1] - reference).abs().max()
        for n in (8, 16)
    ]
    assert errors[1] < errors[0] / 3  # second order: about a quarter


@pytest.mark.parametrize(
    ("method", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)]
)
def test_each_fixed_step_method_converges_at_its_order(method, order):
    """On v = A x the exact sample is expm(A) z; halving the step divides the error by
    2^order (within 30%: the leading term dominates at 16 and 32 steps)."""
    torch.manual_seed(0)
    matrix = torch.randn(2, 2, dtype=torch.float64)
    flow = ContinuousFlow(LinearField(matrix))
    z = torch.randn(8, 2, dtype=torch.float64)
    exact = z @ torch.linalg.matrix_exp(matrix).T
    errors = []
    for n in (16, 32):
        with solver(flow, method=method, steps=n):
            errors.append((flow.map_inverse(z) - exact).abs().max().item())
        assert flow.nfe["forward"] == n * {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
    assert 2**order * 0.7 < errors[0] / errors[1] < 2**order * 1.3, errors


def test_solver_sets_every_cnf_for_the_block_and_restores_them():
    flow = ff.models.cnf(2, hidden=(8,), rtol=1e-4)
    layer = flow.transform
    with solver(flow, method="rk4", steps=3):
        assert flow.sample(5).shape == (5, 2)
        assert (layer.method, layer.steps, layer.nfe["forward"]) == ("rk4", 3, 12)
    assert (layer.method, layer.steps, layer.rtol) == ("dopri5", None, 1e-4)
    with pytest.raises(KeyError), solver(flow, method="euler", steps=2):
        raise KeyError("inside the block")
    assert (layer.method, layer.steps) == ("dopri5", None)
    with solver(flow, atol=1e-7):  # adaptive still, a tighter tolerance
        assert (layer.method, layer.steps, layer.atol) == ("dopri5", None, 1e-7)
    for settings, message in [
        ({"method": "rk4"}, "has no error estimate: give steps=N"),
        ({"method": "rk45", "steps": 2}, "unknown method 'rk45'"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"rtol": 0.0}, "rtol must be a positive number, got 0.0"),
    ]:
        with pytest.raises(ValueError, match=message), solver(flow, **settings):
            pass
        assert (layer.method, layer.steps, layer.rtol) == ("dopri5", None, 1e-4)
    with pytest.raises(ValueError, match="holds no ContinuousFlow"), solver(nn.Linear(2, 2)):
        pass


def test_bad_options_are_one_line_errors():
    field = random_field(2)
    for options, message in [
        ({"trace": "approximate"}, "trace must be 'exact' or 'hutchinson'"),
        ({"noise": "uniform"}, "noise must be 'rademacher' or 'gaussian'"),
        ({"method": "rk45"}, "unknown method 'rk45'"),
        ({"method": "euler"}, "method 'euler' has no error estimate: give steps=N"),
        ({"steps": 0}, "steps must be a positive int or None, got 0"),
        ({"rtol": -1.0}, "rtol must be a positive number, got -1.0"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            ContinuousFlow(field, **options)


def test_a_solve_that_runs_out_of_steps_says_what_to_change():
    flow = ContinuousFlow(random_field(2, scale=3.0), rtol=1e-12, atol=1e-12, max_steps=5)
    with pytest.raises(
        FloatingPointError, match=r"the ODE solve failed for \d+ of 3 samples .* raise max_steps"
    ):
        flow.double()(torch.randn(3, 2, dtype=torch.float64))


def test_a_conditional_cnf_depends_on_its_context_and_saves(tmp_path):
    torch.manual_seed(0)
    flow = randomize(ff.models.cnf(2, hidden=(16,), context_dim=3, embedding_dim=4), scale=0.3)
    x, c = torch.randn(5, 2), torch.randn(5, 3)
    log_p = flow.log_prob(x, c)
    assert not torch.allclose(log_p, flow.log_prob(x, c + 1))
    ff.save(flow, tmp_path / "run")
    loaded = ff.load(tmp_path / "run")
    assert loaded.config == flow.config and loaded.transform.trace == "exact"
    torch.testing.assert_close(loaded.log_prob(x, c), log_p, atol=0, rtol=0)
    assert flow.sample(4, context=c).shape == (4, 5, 2)


def test_sample_and_log_prob_agree_with_log_prob_to_the_solvers_tolerance():
    torch.manual_seed(1)
    flow = randomize(ff.models.cnf(2, hidden=(16, 16), rtol=1e-9, atol=1e-9), scale=0.3).double()
    x, log_q = flow.sample_and_log_prob(200)
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-6, rtol=0)


def test_training_lowers_the_nll_and_gradients_reach_every_parameter():
    data = ff.datasets.load("two-moons", n=1000, seed=0)
    flow = ff.models.cnf(2, hidden=(32, 32))
    before = ff.evaluate(flow, data.val).nll
    history = ff.fit(flow, data.train, data.val, epochs=3, batch_size=256, lr=1e-2, progress=False)
    assert history.best_val_nll < before - 0.2, (before, history.best_val_nll)
    flow.zero_grad()
    flow.log_prob(data.val.x[:64]).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    nfe = flow.transform.nfe  # backward: all but the trial evaluation that sized the 1st step
    assert 0 < nfe["backward"] <= nfe["forward"]


def test_the_regularisers_integrate_the_fields_energy_and_jacobian_norm():
    """v = A x + b from t = 0 to 1: |J|_F^2 = |A|_F^2 at every t; with A = 0 the kinetic
    energy is |b|^2."""
    field = TimeMLP(2, (4,)).double()
    bias = torch.tensor([0.6, -0.8], dtype=torch.float64)
    with torch.no_grad():
        field.out.bias.copy_(bias)  # the last layer's weight is zero: v = b
    flow = ContinuousFlow(field, kinetic=0.5, jacobian=2.0)
    flow(torch.randn(4, 2, dtype=torch.float64))
    assert flow.regularizers["kinetic_energy"] == pytest.approx(1.0, rel=1e-9)  # |b|^2
    assert flow.regularizers["jacobian_norm"] == pytest.approx(0.0, abs=1e-12)
    assert flow.penalty.item() == pytest.approx(0.5, rel=1e-9)
    matrix = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)
    linear = ContinuousFlow(LinearField(matrix), jacobian=1.0, rtol=1e-9, atol=1e-9)
    linear.inverse(torch.randn(4, 2, dtype=torch.float64))
    expected = matrix.square().sum().item()
    assert linear.regularizers["jacobian_norm"] == pytest.approx(expected, rel=1e-7)
    with torch.no_grad():  # not while evaluating: nothing to regularise
        linear(torch.randn(4, 2, dtype=torch.float64))
    assert linear.penalty is None and linear.regularizers == {}


def test_fit_reports_evaluations_and_penalty_beside_the_nll(tmp_path):
    data = ff.datasets.load("two-moons", n=600, seed=0)
    torch.manual_seed(0)
    flow = randomize(ff.models.cnf(2, hidden=(16,), kinetic=0.1, jacobian=0.1), scale=0.3)
    before = ff.evaluate(flow, data.train).nll
    history = ff.fit(
        flow,
        data.train,
        epochs=1,
        batch_size=len(data.train.x),
        lr=1e-12,
        progress=False,
        metrics=tmp_path / "metrics.jsonl",
    )
    record = history.epochs[0]
    assert record["train_nll"] == pytest.approx(before, abs=1e-3)  # the NLL, no penalty in it
    assert record["penalty"] > 0.01 and record["kinetic_energy"] > 0
    assert record["nfe_forward"] > 8 and 0 < record["nfe_backward"] <= record["nfe_forward"]
    assert '"nfe_forward"' in (tmp_path / "metrics.jsonl").read_text()


def test_the_trajectory_passes_through_the_solves_ends():
    flow = ContinuousFlow(random_field(2), rtol=1e-9, atol=1e-9)
    z = torch.randn(6, 2, dtype=torch.float64)
    path = flow.trajectory(z, [0.0, 0.5, 1.0])
    assert path.shape == (3, 6, 2)
    torch.testing.assert_close(path[0], z, atol=0, rtol=0)
    torch.testing.assert_close(path[-1], flow.inverse(z)[0], atol=1e-7, rtol=0)
    halfway = ContinuousFlow(random_field(2), rtol=1e-9, atol=1e-9).trajectory(z, [0.5])[0]
    torch.testing.assert_close(path[1], halfway, atol=1e-7, rtol=0)
    for times in ([0.5, 0.2], [0.0, 1.5], []):
        with pytest.raises(ValueError, match="times must"):
            flow.trajectory(z, times)


def test_the_layers_figure_of_a_cnf_shows_times(tmp_path):
    torch.manual_seed(0)
    flow = randomize(ff.models.cnf(2, hidden=(8,)), scale=0.5)
    x = torch.randn(300, 2)
    stages = ff.plots.layer_stages(flow, x)
    assert [label for label, _ in stages] == [
        "latent z = f(x), t = 0",
        "t = 0.25",
        "t = 0.50",
        "t = 0.75",
        "data x, t = 1",
    ]
    torch.testing.assert_close(stages[-1][1], x, atol=1e-3, rtol=0)  # float32, tol 1e-5
    path = ff.plots.plot_layers_2d(flow, x, tmp_path / "layers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_command_line_fits_evaluates_samples_and_plots_a_cnf(tmp_path, capsys):
    from flowforge.cli import main

    out = tmp_path / "run"
    args = ["fit", "--data", "two-moons", "--model", "cnf", "--hidden", "16,16", "--out", str(out)]
    args += ["--n-samples", "1000", "--epochs", "2", "--model-arg", "kinetic=0.01"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("epoch 1/2  train ") and " nfe " in err[0]
    assert main(["eval", str(out)]) == 0 and "cnf " in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "s.npy")]) == 0
    assert "evaluations of the vector field (dopri5)" in capsys.readouterr().out
    fast = ["sample", str(out), "-n", "50", "--out", str(tmp_path / "f.npy"), "--steps", "4"]
    assert main([*fast, "--method", "rk4"]) == 0
    assert "16 evaluations of the vector field (rk4 at 4 steps)" in capsys.readouterr().out
    assert np.load(tmp_path / "f.npy").shape == (50, 2)
    bad = ["sample", str(out), "-n", "5", "--out", str(tmp_path / "e.npy"), "--method", "euler"]
    assert main(bad) != 0
    message = "flowforge sample: error: method 'euler' has no error estimate: give steps=N"
    assert capsys.readouterr().err.splitlines() == [message]
    assert main(["plot", str(out)]) == 0
    assert (out / "plots" / "layers.png").stat().st_size > 10_000
    assert ff.load(out).transform.kinetic == 0.01


def test_sampling_settings_are_refused_for_a_run_without_an_ode(tmp_path):
    from flowforge.cli import main

    out = tmp_path / "run"
    args = ["fit", "--data", "two-moons", "--model", "realnvp", "--n-samples", "500"]
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    with pytest.raises(ValueError, match="solves no ODE: method and steps apply to continuous"):
        ff.runs.sample_run(out, 10, steps=4)


def test_a_solve_that_fails_in_training_is_a_divergence(monkeypatch, caplog):
    """Rolled back like a non-finite loss, then DivergenceError once the rollbacks are spent."""
    data = ff.datasets.load("two-moons", n=1000, seed=0)
    solve, calls = ContinuousFlow._solve, {"n": 0}

    def failing_third(self, x, context, times):
        calls["n"] += 1
        if calls["n"] == 3:
            raise SolverError("the ODE solve failed for 1 of 100 samples (test)")
        return solve(self, x, context, times)

    monkeypatch.setattr(ContinuousFlow, "_solve", failing_third)
    flow = ff.models.cnf(2, hidden=(8,))
    history = ff.fit(flow, data.train, epochs=1, batch_size=100, progress=False)
    assert [e["event"] for e in history.events].count("rollback") == 1
    assert "the ODE solve failed (the ODE solve failed for 1 of 100" in caplog.text
    calls["n"] = 0
    with pytest.raises(ff.DivergenceError, match="the ODE solve failed"):
        ff.fit(
            ff.models.cnf(2, hidden=(8,)),
            data.train,
            epochs=1,
            batch_size=100,
            progress=False,
            rollbacks=0,
        )
