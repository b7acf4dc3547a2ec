"""The image flows (multi-scale Real NVP, Glow): densities, sampling, temperature, bits/dim,
training, saving, and the command line. Their layers are in the parametrised suite
(tests/cases.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import plots
from flowforge.datasets import Split
from flowforge.transforms import Logit

from cases import randomize

IMAGE_BUILDERS = {
    "realnvp_image": lambda shape, **kw: ff.models.realnvp_image(
        shape, scales=2, blocks=1, channels=8, **kw
    ),
    "glow": lambda shape, **kw: ff.models.glow(shape, levels=2, steps=2, channels=8, **kw),
}
SHAPES = [(1, 4, 4), (3, 4, 4)]


def random_image_flow(name: str, shape, seed: int = 0, **kwargs) -> ff.Flow:
    torch.manual_seed(seed)
    return randomize(IMAGE_BUILDERS[name](shape, **kwargs), seed=seed, scale=0.1).double()


@pytest.mark.parametrize("name", IMAGE_BUILDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sample_and_log_prob_agrees_with_log_prob(name, shape):
    flow = random_image_flow(name, shape)
    x, log_q = flow.sample_and_log_prob(200)
    assert x.shape == (200, *shape) and log_q.shape == (200,)
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-7, rtol=1e-9)


@pytest.mark.parametrize("name", IMAGE_BUILDERS)
def test_temperature_scales_every_base_standard_deviation(name):
    flow = random_image_flow(name, (3, 4, 4), seed=1)
    latents = {}
    for temperature in (1.0, 0.5, 0.0):
        torch.manual_seed(7)  # the same base draws at every temperature
        x = flow.sample(300, temperature=temperature)
        latents[temperature], _ = flow.transform(x)
    # Every latent coordinate, in every factored-out part, is scaled by T about the mean 0,
    # including the parts under Glow's learned prior (an affine map into the base).
    torch.testing.assert_close(latents[0.5], 0.5 * latents[1.0], atol=1e-7, rtol=1e-7)
    assert latents[1.0].std().item() == pytest.approx(1.0, abs=0.05)
    assert latents[0.0].abs().max() < 1e-7
    torch.manual_seed(8)
    cold = flow.sample(5, temperature=0.0)
    assert torch.equal(cold, cold[:1].expand_as(cold)), "T = 0 gives one deterministic image"


def test_an_exactly_uniform_model_scores_8_bits_per_dim():
    # logit(x) followed by the standard logistic density is the uniform density on [0, 1]^D:
    # sigma(y) (1 - sigma(y)) |dy/dx| = 1. On 8-bit pixels that is 8 bits per dimension.
    shape = (3, 4, 4)
    uniform = ff.Flow(Logit(alpha=0.0), ff.StandardLogistic(shape)).double()
    pixels = torch.randint(0, 256, (500, *shape)).to(torch.float32)
    report = ff.evaluate(uniform, Split(pixels, levels=256))
    assert report.nll == pytest.approx(0.0, abs=1e-9)
    assert report.bits_per_dim == pytest.approx(8.0, abs=1e-9)
    assert f"{report.bits_per_dim:.3f}" == "8.000"


def test_bits_per_dim_counts_the_logit_log_determinant():
    # A flow whose latent is the logit itself under N(0, I): its density on [0, 1] is the
    # normal density of the logit times |d logit / dx|, computed here by hand.
    flow = ff.Flow(Logit(alpha=0.05), ff.StandardNormal((1, 2, 2))).double()
    x = torch.rand(10, 1, 2, 2, dtype=torch.float64)
    s = 0.05 + 0.9 * x
    y = torch.log(s / (1 - s))
    expected = -0.5 * y**2 - 0.5 * math.log(2 * math.pi) + math.log(0.9) - torch.log(s * (1 - s))
    torch.testing.assert_close(flow.log_prob(x), expected.flatten(1).sum(-1))


def test_raw_pixel_values_give_a_clear_error():
    flow = IMAGE_BUILDERS["glow"]((1, 4, 4))
    with pytest.raises(ValueError, match=r"expects values in \[0, 1\]"):
        flow.log_prob(torch.full((2, 1, 4, 4), 200.0))


@pytest.mark.parametrize(
    ("builder", "kwargs", "message"),
    [
        (ff.models.glow, dict(shape=(1, 28, 28), levels=3), "divisible by 8; got 28x28"),
        (ff.models.realnvp_image, dict(shape=(1, 6, 6), scales=3), "divisible by 4"),
        (ff.models.glow, dict(shape=(28, 28)), r"shape must be \(channels, height, width\)"),
        (ff.models.glow, dict(shape=(1, 8, 8), steps=0), "steps must be an integer >= 1"),
        (ff.models.glow, dict(shape=(1, 8, 8), shift_bound=0), "shift_bound must be a positive"),
    ],
)
def test_bad_image_builder_arguments(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


@pytest.mark.parametrize("name", IMAGE_BUILDERS)
def test_training_on_digits_lowers_the_nll_and_saves(name, tmp_path):
    data = ff.datasets.load("digits")
    torch.manual_seed(0)
    flow = IMAGE_BUILDERS[name]((1, 8, 8))
    before = ff.evaluate(flow, data.val).bits_per_dim
    history = ff.fit(flow, data.train, data.val, epochs=3, batch_size=128, progress=False)
    after = ff.evaluate(flow, data.val).bits_per_dim
    assert after < before - 0.15, f"{name}: {before:.3f} -> {after:.3f} bits/dim"
    nll = [record["val_nll"] for record in history.epochs]
    assert history.best_epoch == 1 + nll.index(min(nll))
    ff.save(flow, tmp_path / "run")
    loaded = ff.load(tmp_path / "run")
    x = data.test.dequantize(data.test.x[:16])
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), atol=1e-5, rtol=1e-6)
    assert loaded.config == flow.config


def test_interpolation_starts_and_ends_at_the_two_images():
    flow = random_image_flow("glow", (1, 4, 4), seed=2)
    a, b = torch.rand(3, 1, 4, 4, dtype=torch.float64), torch.rand(3, 1, 4, 4, dtype=torch.float64)
    path = plots.interpolate_latent(flow, a, b, steps=5)
    assert path.shape == (3, 5, 1, 4, 4)
    torch.testing.assert_close(path[:, 0], a, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(path[:, -1], b, atol=1e-8, rtol=1e-8)
    z_mid, _ = flow.transform(path[:, 2])
    z_a, _ = flow.transform(a)
    z_b, _ = flow.transform(b)
    torch.testing.assert_close(z_mid, (z_a + z_b) / 2, atol=1e-8, rtol=1e-8)


def test_image_models_take_data_defaults_and_model_args():
    from flowforge import runs

    config = runs.make_config(None, {"data": "mnist", "model": "glow"})
    assert config["model_args"] == {"levels": 2, "steps": 8, "channels": 64, "shift_bound": 5.0}
    assert config["batch_size"] == 64
    nice = runs.make_config(None, {"data": "mnist", "model": "nice"})
    assert nice["batch_size"] == 256 and nice["model_args"] == {}
    data, shape = runs.load_data(runs.make_config(None, {"data": "digits", "model": "glow"}))
    assert shape == (1, 8, 8) and data.train.event_shape == (1, 8, 8)
    flat, _ = runs.load_data(runs.make_config(None, {"data": "digits", "model": "nice"}))
    assert flat.train.event_shape == (64,)
    with pytest.raises(ValueError, match="needs images"):
        runs.load_data(runs.make_config(None, {"data": "two-moons", "model": "glow"}))


def test_cli_fits_a_glow_samples_and_inpaints(tmp_path, capsys):
    from flowforge.cli import main

    run = tmp_path / "glow"
    tiny = ["--model-arg", "levels=1", "--model-arg", "steps=1", "--model-arg", "channels=4"]
    args = ["fit", "--data", "digits", "--model", "glow", *tiny, "--epochs", "1"]
    assert main([*args, "--no-progress", "--out", str(run)]) == 0
    assert ff.load(run).config["levels"] == 1
    figures = {p.name for p in (run / "plots").iterdir()}
    assert {"samples.png", "samples-T0.png", "interpolation.png", "loss.png"} <= figures
    out = tmp_path / "inpainted"
    command = ["inpaint", str(run), "--image", "0,5,7", "--mask", "top", "--out", str(out)]
    assert main([*command, "--steps", "5", "--restarts", "2"]) == 0
    assert "PSNR" in capsys.readouterr().out
    report = json.loads((out / "inpainting.json").read_text())
    assert set(report) >= {"flow", "mean image", "Gaussian"}
    assert 0 <= report["flow"]["map_beats_truth"] <= 1 and len(report["flow"]["log_prob"]) == 3
    inpainted = torch.from_numpy(np.load(out / "inpainted.npy"))
    truth = (ff.datasets.load("digits").test.x[[0, 5, 7]] + 0.5) / 17
    observed = ~ff.inpainting.make_mask("top", (1, 8, 8)).expand_as(truth)
    assert torch.equal(inpainted[observed], truth[observed])
    assert (out / "inpainting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "inpainting.png").stat().st_size > 5_000
    assert main(["inpaint", str(run), "--image", "99999", "--out", str(out)]) == 2
    assert "indices must be in" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: expected KEY=VALUE
        main(["fit", "--model-arg", "levels", "--out", str(tmp_path / "x")])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_shift_bound_stops_an_outlier_from_being_amplified_layer_after_layer():
    # A stack of shift-only couplings (log-scales held at zero) with strong random
    # conditioners: an input far from the data is pushed further by every layer when shifts
    # are free, and moves by at most T per layer with a bound.
    x = 50 * torch.randn(2, 4, 4, 4)
    outputs = {}
    for bound in (None, 2.0):
        torch.manual_seed(0)
        couplings = [
            ff.transforms.ChannelAffineCoupling(4, i % 2 == 0, 8, 0, shift_bound=bound)
            for i in range(8)
        ]
        for coupling in couplings:
            last = coupling.conditioner[-1]
            torch.nn.init.normal_(last.weight, std=1.0)
            with torch.no_grad():
                last.weight[:2].zero_()  # the log-scale outputs
        stack = ff.transforms.Compose(*couplings)
        z, logdet = stack(x)
        assert torch.equal(logdet, torch.zeros(2))
        torch.testing.assert_close(stack.inverse(z)[0], x, atol=1e-3, rtol=1e-4)
        outputs[bound] = z
    assert (outputs[None] - x).abs().max() > x.abs().max()  # displaced beyond its own size
    assert (outputs[2.0] - x).abs().max() <= 8 * 2.0
