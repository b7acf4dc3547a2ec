"""ActNorm's data-dependent initialisation and its saved flag."""

from __future__ import annotations

import torch

from flowforge.transforms import ActNorm


def test_initialisation_standardises_the_first_batch():
    layer = ActNorm(4).double()
    shift = torch.tensor([5.0, -3.0, 0.0, 10.0], dtype=torch.float64)
    scale = torch.tensor([0.1, 2.0, 7.0, 1e-3], dtype=torch.float64)
    x = shift + scale * torch.randn(500, 4, dtype=torch.float64)
    z, logdet = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(z.mean(0), torch.zeros(4).double(), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4).double(), atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet, -x.std(0, unbiased=False).log().sum().expand(500))


def test_constant_feature_is_safe():
    layer = ActNorm(3)
    x = torch.randn(100, 3)
    x[:, 1] = 7.0
    z, logdet = layer(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(z[:, 1], torch.zeros(100))
    assert layer.log_scale[1] == 0  # scale 1 for the constant feature
    # A later batch where the feature moves stays finite and moderate.
    z2, _ = layer(torch.randn(10, 3) + 7)
    assert z2[:, 1].abs().max() < 10


def test_single_sample_batch_is_safe():
    layer = ActNorm(2)
    z, logdet = layer(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(z, torch.zeros(1, 2))
    torch.testing.assert_close(logdet, torch.zeros(1))


def test_initialised_flag_is_saved_and_restored():
    trained = ActNorm(2)
    trained(torch.randn(50, 2) * 3 + 1)
    state = trained.state_dict()
    assert "initialized" in state and bool(state["initialized"])

    restored = ActNorm(2)
    restored.load_state_dict(state)
    x = torch.randn(20, 2) * 10  # a batch with other statistics must not re-initialise it
    torch.testing.assert_close(restored(x)[0], trained(x)[0])


def test_training_the_generative_direction_marks_it_initialised():
    layer = ActNorm(2)
    with torch.no_grad():
        layer.inverse(torch.randn(3, 2))  # sampling to look: leaves it uninitialised
    assert not bool(layer.initialized)
    layer.inverse(torch.randn(3, 2))  # gradient-tracking, training mode: VI
    assert bool(layer.initialized)
    x = torch.randn(30, 2) * 5
    torch.testing.assert_close(layer(x)[0], x)  # still the identity: no data-init later


def test_image_actnorm_normalises_per_channel():
    layer = ActNorm(3, event_dims=3)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1) + 2
    z, logdet = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert logdet.shape == (8,)
    torch.testing.assert_close(logdet[0], -16 * layer.log_scale.sum())
