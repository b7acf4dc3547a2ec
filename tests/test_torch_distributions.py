"""torch.distributions and flowforge together: any distribution over vectors as a flow's base
(`TorchBase`), and flowforge transforms inside a `TransformedDistribution` (`TorchTransform`)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    StudentT,
    TransformedDistribution,
)

import flowforge as ff
from flowforge.flows.distributions import TorchBase
from flowforge.transforms import TorchTransform

F64 = torch.float64
EPS = torch.finfo(F64).eps


def random_realnvp(dim: int = 3) -> ff.Flow:
    torch.manual_seed(0)
    flow = ff.models.realnvp(dim=dim, layers=3, hidden=(16,)).double()
    with torch.no_grad():  # random, not the identity it starts as
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return flow


def student_t(dim: int = 3) -> StudentT:
    return StudentT(
        torch.tensor(4.0, dtype=F64), torch.zeros(dim, dtype=F64), torch.ones(dim, dtype=F64)
    )


def test_a_student_t_base_and_a_transformed_distribution_give_the_flows_log_prob():
    """Three routes to the same density: a Flow over a Student-t base, torch's
    TransformedDistribution of that Student-t through the adapter, and the formula."""
    built = random_realnvp()
    flow = ff.Flow(built.transform, student_t())
    torched = TransformedDistribution(
        Independent(student_t(), 1), [TorchTransform(built.transform)]
    )
    x = 2.0 * torch.randn(64, 3, dtype=F64)
    z, logdet = built.transform(x)
    by_formula = Independent(student_t(), 1).log_prob(z) + logdet
    # the same float64 operations in another order: a few hundred ulp of values of ~10
    tolerance = 1e3 * EPS * by_formula.abs().max().item()
    torch.testing.assert_close(flow.log_prob(x), by_formula, rtol=0, atol=tolerance)
    torch.testing.assert_close(torched.log_prob(x), by_formula, rtol=0, atol=tolerance)
    drawn = torched.rsample((4, 5))
    assert drawn.shape == (4, 5, 3) and flow.sample(7).shape == (7, 3)
    torch.testing.assert_close(
        torched.log_prob(drawn), flow.log_prob(drawn.reshape(20, 3)).reshape(4, 5),
        rtol=0, atol=tolerance,
    )  # fmt: skip


def test_a_mixture_base_trains_with_fit():
    """A two-component Gaussian mixture as the base of a Real NVP fitted to two moons."""
    torch.manual_seed(0)
    mixture = MixtureSameFamily(
        Categorical(torch.ones(2)),
        Independent(Normal(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.ones(2, 2)), 1),
    )
    flow = ff.Flow(ff.models.realnvp(dim=2, layers=4, hidden=(32,)).transform, mixture)
    data = ff.datasets.load("two-moons", n=3000)
    history = ff.fit(flow, data.train, data.val, epochs=5, lr=3e-3, progress=False)
    assert history.epochs[-1]["val_nll"] < history.epochs[0]["val_nll"]
    assert torch.isfinite(flow.sample(100)).all()


def test_a_fitted_gaussian_base_is_the_flows_base():
    data = torch.randn(500, 3, dtype=F64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0, 1, 0.3], [0, 0, 2]], dtype=F64
    )
    gaussian = MultivariateNormal(data.mean(0), torch.cov(data.T))
    built = random_realnvp()
    flow = ff.Flow(built.transform, gaussian)
    z, logdet = built.transform(data)
    torch.testing.assert_close(flow.log_prob(data), gaussian.log_prob(z) + logdet)
    assert isinstance(flow.base, TorchBase) and flow.base.loc.dtype == F64


def test_a_float32_base_under_a_float64_flow_computes_in_float32_and_returns_float64():
    built = random_realnvp()
    flow = ff.Flow(built.transform, Independent(Normal(torch.zeros(3), torch.ones(3)), 1))
    assert flow.dtype == torch.float32  # the base's samples' dtype: the flow follows it
    flow = flow.double()  # the base's buffer follows; the distribution stays float32
    x = torch.randn(8, 3, dtype=F64)
    log_p = flow.log_prob(x)
    assert log_p.dtype == F64 and torch.isfinite(log_p).all()
    assert flow.sample(4).dtype == F64


def test_a_flow_as_a_base_trains_as_a_submodule():
    inner = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
    outer = ff.Flow(ff.models.realnvp(dim=2, layers=2, hidden=(8,)).transform, inner)
    names = [name for name, _ in outer.named_parameters()]
    assert any(name.startswith("base.distribution.") for name in names)
    assert outer.log_prob(torch.randn(5, 2)).shape == (5,)


@pytest.mark.parametrize(
    ("distribution", "message"),
    [
        (Normal(0.0, 1.0), r"event shape \(D,\) and no batch shape, got event shape \(\)"),
        (Independent(Normal(torch.zeros(2, 3), 1.0), 2), r"got event shape \(2, 3\)"),
        (Normal(torch.zeros(4, 2), 1.0), r"batch shape \(4, 2\)"),
    ],
)
def test_a_base_that_is_not_over_vectors_is_a_one_line_error(distribution, message):
    with pytest.raises(ValueError, match=message) as caught:
        TorchBase(distribution)
    assert "\n" not in str(caught.value)
    with pytest.raises(TypeError, match=r"expected a torch\.distributions\.Distribution"):
        TorchBase("normal")
