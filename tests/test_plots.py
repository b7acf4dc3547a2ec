"""The figures: each writes a readable, non-blank PNG; the layer stages are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import flowforge as ff
from flowforge import plots
from flowforge.transforms import steps

from cases import randomize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path) -> np.ndarray:
    """Check that ``path`` is a non-blank PNG and return its image ``(H, W, channels)``."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 2_000
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) > 200
    rgb = (255 * image[..., :3]).astype(np.int64)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert len(colours) > 10, "the image is (almost) a single colour"
    return image


def ring(n: int = 600, seed: int = 0) -> torch.Tensor:
    """Points on a noisy ring of radius 2: ``(n, 2)``."""
    generator = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    radius = 2 + 0.2 * torch.randn(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x * x).sum(-1) - math.log(2 * math.pi)


@pytest.fixture
def realnvp():
    return randomize(ff.models.realnvp(dim=2, layers=4, hidden=(8,)), scale=0.3)


@pytest.fixture
def planar():
    return randomize(ff.models.planar(2, 4), scale=0.5)


def history(epochs: int = 6, **extra) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_nll": 3.0 / (e + 1) + 1.0,
            "val_nll": None if e % 2 else 3.2 / (e + 1) + 1.1,
            **{k: f(e) for k, f in extra.items()},
        }
        for e in range(1, epochs + 1)
    ]


# --- plot_losses -------------------------------------------------------------------------


def test_losses_with_missing_validation_values(tmp_path):
    path = plots.plot_losses(history(), tmp_path / "new" / "dir" / "losses.png", title="toy")
    assert path == tmp_path / "new" / "dir" / "losses.png"
    check_png(path)


def test_losses_without_any_validation(tmp_path):
    runs = [{"epoch": e, "train_nll": 1.0 / e, "val_nll": None} for e in range(1, 4)]
    check_png(plots.plot_losses(runs, tmp_path / "losses.png"))


def test_losses_with_bits_per_dim_and_lr_add_panels(tmp_path):
    plain = check_png(plots.plot_losses(history(), tmp_path / "plain.png"))
    runs = history(
        train_bpd=lambda e: 2.0 / e + 1,
        val_bpd=lambda e: 2.1 / e + 1,
        lr=lambda e: 1e-3 * 0.5**e,
    )
    wide = check_png(plots.plot_losses(runs, str(tmp_path / "wide.png")))
    assert wide.shape[1] > 2.5 * plain.shape[1]


def test_losses_reject_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_losses([], tmp_path / "losses.png")


# --- 2-D densities and samples -----------------------------------------------------------


def test_density_with_true_density_has_three_panels(realnvp, tmp_path):
    data = ring()
    two = check_png(plots.plot_density_2d(realnvp, data, tmp_path / "two.png", resolution=40))
    three = plots.plot_density_2d(
        realnvp, data, tmp_path / "three.png", true_log_prob=standard_normal_log_prob
    )
    assert check_png(three).shape[1] > 1.3 * two.shape[1]


def test_density_in_float64_with_bounds_and_planar_flow(planar, tmp_path):
    flow = planar.double()
    bounds = ((-4.0, 4.0), (-3.0, 3.0))
    path = plots.plot_density_2d(flow, ring().numpy(), tmp_path / "d.png", bounds=bounds)
    check_png(path)
    assert flow.training, "the flow's training mode must be restored"


def test_density_rejects_a_flow_that_is_not_2d(tmp_path):
    flow = ff.models.realnvp(dim=3, layers=2, hidden=(4,))
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_density_2d(flow, torch.randn(10, 3), tmp_path / "d.png")


def test_default_bounds_cover_the_data_with_a_margin():
    (x0, x1), (y0, y1) = plots.default_bounds(ring())
    assert x0 < -2 < 2 < x1 and y0 < -2 < 2 < y1


@pytest.mark.parametrize("n", [None, 300])
def test_samples_2d(realnvp, tmp_path, n):
    check_png(plots.plot_samples_2d(realnvp, ring(), tmp_path / "samples.png", n=n))


# --- points through the layers -----------------------------------------------------------


@pytest.mark.parametrize(("every", "count"), [(1, 5), (2, 3), (3, 3), (4, 2), (10, 2)])
def test_layer_stages_go_from_latent_to_data(realnvp, every, count):
    x = ring(200)
    stages = plots.layer_stages(realnvp, x, every)
    assert len(stages) == count == math.ceil(len(steps(realnvp.transform)) / every) + 1
    z, _ = realnvp.transform(x)
    torch.testing.assert_close(stages[0][1], z, atol=1e-5, rtol=0)
    torch.testing.assert_close(stages[-1][1], x, atol=1e-5, rtol=0)
    assert (stages[0][1] - x).abs().max() > 1e-2, "the test flow must not be the identity"
    assert all(isinstance(label, str) and label for label, _ in stages)


def test_layer_stages_of_a_planar_flow(planar):
    x = ring(200)
    stages = plots.layer_stages(planar, x, every=2)
    assert len(stages) == 3
    torch.testing.assert_close(stages[0][1], planar.transform(x)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(stages[-1][1], x, atol=1e-5, rtol=0)


def test_layer_stages_reject_a_bad_every(realnvp):
    with pytest.raises(ValueError, match="every"):
        plots.layer_stages(realnvp, ring(10), every=0)


@pytest.mark.parametrize("name", ["realnvp", "planar"])
def test_layers_2d(name, request, tmp_path):
    flow = request.getfixturevalue(name)
    wide = check_png(plots.plot_layers_2d(flow, ring(), tmp_path / "wide.png", every=1))
    narrow = check_png(plots.plot_layers_2d(flow, ring(), tmp_path / "narrow.png", every=2))
    assert wide.shape[1] > 1.4 * narrow.shape[1]  # 5 panels against 3


# --- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 1, 6, 6), (12, 6, 6), (12, 36)])
def test_grey_image_grid(tmp_path, shape):
    images = 1.4 * torch.rand(shape) - 0.2  # out of range: clipped
    image = check_png(plots.plot_image_grid(images, tmp_path / "grid.png", title="grey"))
    assert np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 0], image[..., 2])


def test_rgb_image_grid_with_rows_of_three(tmp_path):
    images = np.random.default_rng(0).random((7, 3, 5, 5))
    image = check_png(plots.plot_image_grid(images, tmp_path / "rgb.png", nrow=3))
    assert not np.allclose(image[..., 0], image[..., 1])


@pytest.mark.parametrize("shape", [(4, 2, 5, 5), (4, 15), (0, 1, 4, 4)])
def test_image_grid_rejects_other_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"images|square"):
        plots.plot_image_grid(torch.rand(shape), tmp_path / "grid.png")


@pytest.mark.parametrize(
    ("image_shape", "levels", "temperature"), [((1, 4, 4), None, 1.0), (None, 256, 0.7)]
)
def test_samples_images(tmp_path, image_shape, levels, temperature):
    flow = randomize(ff.models.nice(dim=16, hidden=(8,)), scale=0.3)
    path = plots.plot_samples_images(
        flow,
        tmp_path / "s.png",
        n=16,
        temperature=temperature,
        image_shape=image_shape,
        levels=levels,
    )
    check_png(path)


def test_samples_images_need_a_shape_for_non_square_vectors(tmp_path):
    flow = ff.models.nice(dim=12, hidden=(8,))
    with pytest.raises(ValueError, match="image_shape"):
        plots.plot_samples_images(flow, tmp_path / "s.png", n=4)
    check_png(plots.plot_samples_images(flow, tmp_path / "s.png", n=4, image_shape=(3, 2, 2)))


def test_vi_grid_and_panels(tmp_path):
    from flowforge.inference import targets

    target = targets.get("u1")
    flows = [(f"planar K = {k}", ff.models.planar(2, k)) for k in (1, 2)]
    path = plots.plot_vi_grid(
        [("U1", target.log_prob, flows)], tmp_path / "grid.png", resolution=40
    )
    image = imread(path)
    assert image.shape[1] > 2 * image.shape[0]  # three columns in one row
    true, learned = plots.vi_density_panels(flows[0][1], target.log_prob, target.bounds, 50)
    cell = (8 / 49) ** 2
    assert true.shape == learned.shape == (50, 50)
    assert abs(true.sum() * cell - 1) < 1e-9 and abs(learned.sum() * cell - 1) < 1e-9
    assert true[25, 0] < 1e-3 * true.max()  # U1 is a ring: nothing at the left edge's middle
