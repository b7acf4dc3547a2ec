"""Bad input gives one clear line: what is wrong and what was expected."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff


@pytest.fixture
def flow():
    return ff.models.realnvp(dim=3, layers=2, hidden=(8,))


def test_wrong_trailing_dimension(flow):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\), got \(10, 4\)"):
        flow.log_prob(torch.randn(10, 4))


def test_mixed_dtypes(flow):
    with pytest.raises(TypeError, match=r"dtype torch.float64 but the flow is torch.float32"):
        flow.log_prob(torch.randn(10, 3, dtype=torch.float64))


def test_integer_input(flow):
    with pytest.raises(TypeError, match=r"dtype torch.int64 .* x.to\(torch.float32\)"):
        flow.log_prob(torch.ones(10, 3, dtype=torch.long))


def test_not_a_tensor(flow):
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        flow.log_prob([[0.0, 1.0, 2.0]])


def test_nan_input(flow):
    x = torch.randn(10, 3)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN values"):
        flow.log_prob(x)
    flow.validate_args = False  # opt out of the check in tight loops
    assert torch.isnan(flow.log_prob(x)[3])


def test_missing_context_for_a_conditional_flow():
    flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,), context_dim=4)
    with pytest.raises(ValueError, match=r"expected a context of shape \(\.\.\., 4\), got none"):
        flow.log_prob(torch.randn(5, 2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ff.models.realnvp(dim=1), "dim must be an integer >= 2, got 1"),
        (lambda: ff.models.realnvp(dim=2.5), "dim must be an integer >= 2, got 2.5"),
        (lambda: ff.models.nice(dim=4, layers=0), "layers must be an integer >= 1, got 0"),
        (lambda: ff.models.realnvp(dim=2, hidden=()), "hidden must be a non-empty sequence"),
        (lambda: ff.models.realnvp(dim=2, mask="diagonal"), "unknown mask 'diagonal'"),
        (lambda: ff.models.realnvp(dim=2, activation="swish"), "unknown activation 'swish'"),
        (lambda: ff.models.planar(dim=2, base="gauss"), "unknown base 'gauss'"),
        (lambda: ff.models.build({"model": "glowish"}), "unknown model 'glowish'"),
        (lambda: ff.transforms.Permutation(torch.tensor([0, 0, 1])), "expected a permutation"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
