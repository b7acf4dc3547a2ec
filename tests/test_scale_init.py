"""NICE's diagonal scaling initialised from the data (``nice(scale_init="data")``): each
output feature starts with the base's spread, once, and the flag survives save and load."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.transforms import DiagonalScaling


def test_the_first_batch_sets_each_feature_to_the_target_spread():
    spreads = torch.tensor([1e-3, 0.5, 2.0, 7.0], dtype=torch.float64)
    x = torch.randn(4000, 4, dtype=torch.float64) * spreads
    layer = DiagonalScaling(4, target_scale=1.8).double()
    z, logdet = layer(x)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.full((4,), 1.8, dtype=torch.float64))
    assert torch.allclose(logdet, layer.log_scale.sum().expand(4000))
    assert layer.log_scale[0].item() == pytest.approx(math.log(1.8 / x[:, 0].std(unbiased=False)))
    before = layer.log_scale.clone()
    layer(3 * x)  # initialised once: a later batch changes nothing
    assert torch.equal(layer.log_scale, before)
    again = DiagonalScaling(4, target_scale=1.8).double()
    again.load_state_dict(layer.state_dict())
    assert bool(again.initialized) and torch.equal(again.log_scale, before)


def test_without_a_target_the_layer_is_the_identity_and_has_no_flag():
    layer = DiagonalScaling(3)
    _, logdet = layer(torch.randn(5, 3))
    assert "initialized" not in layer.state_dict() and torch.equal(logdet, torch.zeros(5))
    with pytest.raises(ValueError, match="target_scale must be a positive number, got 0"):
        DiagonalScaling(3, target_scale=0)


def test_nice_starts_nearer_the_data_with_the_scaling_from_the_data(tmp_path):
    data = ff.datasets.load("digits", seed=0, flatten=True)
    x = data.train.dequantize(data.train.x[:512], torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    zeros = ff.models.nice(64, layers=2, hidden=(32,))
    torch.manual_seed(0)
    from_data = ff.models.nice(64, layers=2, hidden=(32,), scale_init="data")
    from_data.train()
    with torch.no_grad():
        first = -from_data.log_prob(x).mean().item()  # initialises on this batch
    nll_zeros = -zeros.log_prob(x).mean().item()
    # the logistic at s = 0 on data in [0, 1] costs about 1.4 nats a pixel; matched spreads
    # gain on every pixel, most on the near-constant ones: half a nat a pixel at least
    # (measured 92.2 -> 30.3 nats)
    assert first < nll_zeros - 32
    ff.save(from_data, tmp_path / "nice")
    loaded = ff.load(tmp_path / "nice")
    assert torch.equal(loaded.log_prob(x), from_data.log_prob(x))
    with pytest.raises(ValueError, match="scale_init must be 'zeros' or 'data', got 'ones'"):
        ff.models.nice(64, scale_init="ones")


def test_a_gain_moves_the_scaling_that_many_times_as_fast_under_adam():
    """s = k theta: one Adam step moves theta by about lr whatever the gradient, so s moves
    k lr (float64; Adam's first step is lr * g / (|g| + eps), lr to within eps / |g|)."""
    x = torch.rand(64, 3, dtype=torch.float64) * 1e-2
    moved = {}
    for gain in (1.0, 10.0):
        layer = DiagonalScaling(3, gain=gain).double()
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
        z, logdet = layer(x)
        loss = -(ff.StandardLogistic(3).double().log_prob(z) + logdet).mean()
        loss.backward()
        optimizer.step()
        moved[gain] = layer.scale.detach()
    torch.testing.assert_close(moved[1.0].abs(), torch.full((3,), 1e-3, dtype=torch.float64))
    torch.testing.assert_close(moved[10.0], 10 * moved[1.0])
    with pytest.raises(ValueError, match="gain must be a positive number, got 0"):
        DiagonalScaling(3, gain=0)


def test_a_gained_scaling_from_the_data_starts_at_the_same_spread(tmp_path):
    x = torch.randn(500, 2, dtype=torch.float64) * torch.tensor([1e-3, 2.0], dtype=torch.float64)
    plain = DiagonalScaling(2, target_scale=1.8).double()
    gained = DiagonalScaling(2, target_scale=1.8, gain=10.0).double()
    torch.testing.assert_close(gained(x)[0], plain(x)[0])
    torch.testing.assert_close(gained.log_scale * 10, plain.log_scale)
    flow = ff.models.nice(4, layers=2, hidden=(8,), scale_gain=10.0)
    ff.save(flow, tmp_path / "nice")
    assert ff.load(tmp_path / "nice").transform.transforms[-1].gain == 10.0
