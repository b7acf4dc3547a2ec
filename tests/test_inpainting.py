"""Inpainting with a flow prior: observed pixels are never touched, the MAP fill of an exactly
Gaussian flow is the Gaussian conditional mean, restarts keep the best, masks, baselines, PSNR,
and the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread, imsave
from torch import nn

import flowforge as ff
from flowforge import plots
from flowforge.applications.inpainting import gaussian_fill, inpaint, make_mask, mean_fill, psnr
from flowforge.transforms import ActNorm, Compose, Permutation, Transform

from cases import randomize

IMAGE = (1, 4, 4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of small steps: one thread avoids waiting on a second one on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_flow(dtype=torch.float32, seed: int = 0) -> ff.Flow:
    """A random (non-identity) Real NVP over flat 4x4 images."""
    torch.manual_seed(seed)
    flow = ff.models.realnvp(dim=16, layers=4, hidden=(16,))
    return randomize(flow, seed=seed, scale=0.3).to(dtype)


def images(n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *IMAGE), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- observed pixels are never changed -------------------------------------------------------


@pytest.mark.parametrize("kind", ["center", "top", "random50"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_observed_pixels_are_returned_exactly(kind, bounds):
    flow = image_flow()
    mask = make_mask(kind, IMAGE, seed=3)
    x = images(2)
    x_with_nan = x.masked_fill(mask, math.nan)  # missing pixels may hold anything
    cases = [
        (x_with_nan, mask, (2,)),  # a batch of images shaped unlike the flow's (16,) events
        (x[0], mask, ()),  # one image
        (x.reshape(2, 16), mask.reshape(16), (2,)),  # vectors of the flow's event shape
        (x.double(), mask.expand(2, *IMAGE), (2,)),  # another dtype, one mask per image
    ]
    for image, m, batch in cases:
        result = inpaint(flow, image, m, restarts=3, steps=15, lr=0.1, bounds=bounds, seed=1)
        full = m.expand(image.shape)
        assert result.image.shape == image.shape and result.image.dtype == image.dtype
        assert torch.equal(result.image[~full], image[~full])
        assert torch.isfinite(result.image).all()
        if bounds is not None:
            assert ((result.image >= 0) & (result.image <= 1)).all()
        assert result.log_prob.shape == batch


def test_a_fully_missing_image_is_filled():
    flow = image_flow()
    mask = torch.ones(IMAGE, dtype=torch.bool)
    result = inpaint(flow, torch.full(IMAGE, math.nan), mask, restarts=2, steps=10)
    assert torch.isfinite(result.image).all() and torch.isfinite(result.log_prob)


# --- correctness on an exactly Gaussian flow -------------------------------------------------


class Linear(Transform):
    """z = A x + b for a fixed invertible A, log|det J| = log|det A|."""

    def __init__(self, matrix: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(matrix)
        self.b = nn.Parameter(shift)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.slogdet(self.A).logabsdet.expand(x.shape[0])

    def forward(self, x, context=None):
        return x @ self.A.T + self.b, self._logdet(x)

    def inverse(self, z, context=None):
        return torch.linalg.solve(self.A, (z - self.b).T).T, -self._logdet(z)


def gaussian_flow(dim: int = 6, seed: int = 0) -> ff.Flow:
    """An exactly Gaussian flow with correlated features: a random ActNorm, a random linear map,
    a permutation, then a fresh Real NVP (whose couplings are the identity) on N(0, I)."""
    generator = torch.Generator().manual_seed(seed)
    actnorm = ActNorm(dim)
    with torch.no_grad():
        actnorm.loc.copy_(torch.randn(dim, generator=generator))
        actnorm.log_scale.copy_(0.3 * torch.randn(dim, generator=generator))
        actnorm.initialized.fill_(True)
    A = torch.eye(dim) + 0.6 * torch.randn(dim, dim, generator=generator)
    b = torch.randn(dim, generator=generator)
    permutation = Permutation(torch.randperm(dim, generator=generator))
    realnvp = ff.models.realnvp(dim=dim, layers=2, hidden=(8,))
    transform = Compose(actnorm, Linear(A, b), permutation, *realnvp.transform.transforms)
    return ff.Flow(transform, ff.StandardNormal(dim)).double()


def gaussian_of(flow: ff.Flow) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of an affine flow on N(0, I), after checking that it is affine and
    that its log-determinant is that of its Jacobian (by autograd)."""
    dim = flow.event_shape[0]
    x = torch.randn(5, dim, dtype=torch.float64)
    c, _ = flow.transform(torch.zeros(1, dim, dtype=torch.float64))
    J = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], x[0])
    z, logdet = flow.transform(x)
    torch.testing.assert_close(z, x @ J.T + c, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(J).logabsdet.expand(5))
    precision = J.T @ J
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    mean = torch.linalg.solve(J, -c[0])
    gaussian = torch.distributions.MultivariateNormal(mean, covariance)
    torch.testing.assert_close(flow.log_prob(x), gaussian.log_prob(x), atol=1e-10, rtol=1e-10)
    return mean.detach(), covariance.detach()


def conditional_mean(mean, covariance, x, missing):
    """mu_m + S_mo S_oo^{-1} (x_o - mu_o) per row, observed entries copied."""
    out = x.clone()
    for i, m in enumerate(missing):
        o = ~m
        gain = torch.linalg.solve(covariance[o][:, o], covariance[o][:, m]).T
        out[i, m] = mean[m] + gain @ (x[i, o] - mean[o])
    return out


MASKS = torch.tensor(
    [[1, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]],
    dtype=torch.bool,
)


def test_gaussian_flow_inpaints_the_conditional_mean():
    flow = gaussian_flow()
    mean, covariance = gaussian_of(flow)
    with torch.no_grad():
        x = flow.sample(len(MASKS))
    expected = conditional_mean(mean, covariance, x, MASKS)
    assert not torch.allclose(expected[MASKS], mean.expand_as(x)[MASKS], atol=0.05)
    result = inpaint(flow, x, MASKS, bounds=None, restarts=2, steps=800, lr=0.1)
    torch.testing.assert_close(result.image, expected, atol=1e-5, rtol=0)
    assert torch.equal(result.image[~MASKS], x[~MASKS])
    torch.testing.assert_close(result.log_prob, flow.log_prob(expected), atol=1e-8, rtol=0)


def test_a_fresh_realnvp_inpaints_zero():
    """Its couplings start as the identity, so it is N(0, I): the conditional mean is 0."""
    flow = ff.models.realnvp(dim=6, layers=2).double()
    x = torch.randn(len(MASKS), 6, dtype=torch.float64)
    result = inpaint(flow, x, MASKS, bounds=None, restarts=2, steps=400, lr=0.1)
    torch.testing.assert_close(result.image, x.masked_fill(MASKS, 0.0), atol=1e-5, rtol=0)


def test_gaussian_fill_matches_the_flow_and_its_own_fit():
    flow = gaussian_flow(seed=1)
    mean, covariance = gaussian_of(flow)
    with torch.no_grad():
        train = flow.sample(50_000)
        x = flow.sample(len(MASKS))
    filled = gaussian_fill(train, x, MASKS, eps=0.0)
    assert torch.equal(filled[~MASKS], x[~MASKS])
    fit_mean = train.mean(0)
    fit_covariance = (train - fit_mean).T @ (train - fit_mean) / len(train)
    own = conditional_mean(fit_mean, fit_covariance, x, MASKS)
    torch.testing.assert_close(filled, own, atol=1e-10, rtol=1e-10)
    scale = covariance.diagonal().sqrt().expand_as(x)
    exact = conditional_mean(mean, covariance, x, MASKS)
    assert ((filled - exact).abs() / scale).max() < 0.05


# --- restarts -------------------------------------------------------------------------------


def test_restarts_keep_the_best():
    flow = image_flow(torch.float64, seed=2)
    x = images(3, torch.float64, seed=2)
    mask = make_mask("center", IMAGE)
    result = inpaint(flow, x, mask, restarts=5, steps=30, lr=0.1, seed=4)
    assert result.start_log_prob.shape == result.restart_log_prob.shape == (3, 5)
    assert result.history.shape == (31, 3)
    assert (result.start_log_prob.std(1) > 0).all(), "restarts should start apart"
    torch.testing.assert_close(result.log_prob, flow.log_prob(result.image.reshape(3, 16)))
    torch.testing.assert_close(result.log_prob, result.restart_log_prob.max(1).values)
    assert torch.equal(result.best_restart, result.restart_log_prob.argmax(1))
    assert (result.log_prob >= result.start_log_prob.max(1).values - 1e-9).all()
    assert (result.restart_log_prob >= result.start_log_prob - 1e-9).all()
    assert (result.history.diff(dim=0) >= 0).all()
    torch.testing.assert_close(result.history[-1], result.log_prob)
    assert (result.log_prob > result.history[0] + 1e-3).all(), "the ascent should improve"
    alone = inpaint(flow, x, mask, restarts=1, steps=30, lr=0.1, seed=4)
    assert (result.log_prob >= alone.log_prob - 1e-6).all()
    again = inpaint(flow, x, mask, restarts=5, steps=30, lr=0.1, seed=4)
    assert torch.equal(again.image, result.image)


# --- the flow is left as it was --------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_flow_parameters_and_mode_are_restored(training):
    flow = image_flow()
    flow.train(training)
    flow.transform.transforms[0].train(not training)  # a mixed mode is restored too
    modes = [m.training for m in flow.modules()]
    frozen = next(flow.parameters())
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in flow.parameters()]
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    mask = make_mask("top", IMAGE)
    with torch.no_grad():  # inpainting needs gradients, even inside no_grad
        result = inpaint(flow, images(2), mask, restarts=2, steps=10)
    assert torch.isfinite(result.log_prob).all()
    assert flow.training is training and [m.training for m in flow.modules()] == modes
    assert [p.requires_grad for p in flow.parameters()] == flags
    assert all(p.grad is None for p in flow.parameters())
    after = flow.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- argument errors -------------------------------------------------------------------------


def test_bad_arguments_raise_one_line_errors():
    flow = image_flow()
    x = images(2)
    mask = make_mask("center", IMAGE)
    bad = [
        (TypeError, dict(mask=mask.float()), "bool"),
        (ValueError, dict(mask=mask[:, :2]), "mask has shape"),
        (ValueError, dict(mask=torch.zeros(IMAGE, dtype=torch.bool)), "no missing pixel"),
        (TypeError, dict(image=(255 * x).long()), "floating"),
        (ValueError, dict(image=torch.full((2, 1, 4, 4), math.nan)), "NaN"),
        (ValueError, dict(image=torch.rand(2, 15)), "shape"),
        (ValueError, dict(restarts=0), "restarts"),
        (ValueError, dict(steps=-1), "steps"),
        (ValueError, dict(lr=0.0), "lr"),
        (ValueError, dict(bounds=(1.0, 0.0)), "bounds"),
    ]
    for error, change, words in bad:
        arguments = dict(flow=flow, image=x, mask=mask, steps=2) | change
        with pytest.raises(error, match=words) as info:
            inpaint(**arguments)
        assert "\n" not in str(info.value)
    fresh = ff.models.realnvp(dim=16, layers=2, hidden=(8,), actnorm=True)
    with pytest.raises(ValueError, match="ActNorm"):
        inpaint(fresh, x, mask)
    assert not any(m.initialized for m in fresh.modules() if isinstance(m, ActNorm))


# --- masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28)])
def test_mask_kinds_cover_the_expected_fractions(shape):
    center, top = make_mask("center", shape), make_mask("top", shape)
    random = make_mask("random50", shape, seed=1)
    for mask in (center, top, random):
        assert mask.dtype == torch.bool and mask.shape == shape
        assert (mask == mask[:1]).all(), "every channel shares the mask"
    assert center.float().mean() == 0.25
    assert torch.equal(center, center.flip(1, 2)), "the square is centred"
    assert top.float().mean() == 0.5 and top[:, : shape[1] // 2].all()
    assert abs(random.float().mean().item() - 0.5) < 0.1
    assert torch.equal(random, make_mask("random50", shape, seed=1))
    assert not torch.equal(random, make_mask("random50", shape, seed=2))


def test_mask_files_round_trip(tmp_path):
    shape = (3, 6, 5)
    mask = make_mask("random50", shape, seed=5)
    np.save(tmp_path / "plane.npy", mask[0].numpy())
    np.save(tmp_path / "bytes.npy", 255 * mask.numpy().astype(np.uint8))
    imsave(tmp_path / "mask.png", mask[0].numpy().astype(float), cmap="gray", vmin=0, vmax=1)
    for name in ("plane.npy", "bytes.npy", "mask.png"):
        assert torch.equal(make_mask(tmp_path / name, shape), mask), name
    assert torch.equal(make_mask(str(tmp_path / "plane.npy"), shape), mask)
    assert imread(tmp_path / "mask.png").ndim == 3  # RGBA, alpha ignored


def test_bad_masks_raise(tmp_path):
    np.save(tmp_path / "small.npy", np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"shape \(5, 5\); expected \(H, W\) = \(8, 8\)"):
        make_mask(tmp_path / "small.npy", (1, 8, 8))
    with pytest.raises(ValueError, match="unknown mask 'middle'"):
        make_mask("middle", (1, 8, 8))
    with pytest.raises(FileNotFoundError, match=r"mask file .*absent\.npy does not exist"):
        make_mask(tmp_path / "absent.npy", (1, 8, 8))
    with pytest.raises(ValueError, match="image shape"):
        make_mask("center", (8, 8))


# --- baselines and scores --------------------------------------------------------------------


def test_mean_fill_uses_the_training_mean():
    train = torch.randn(50, *IMAGE)
    x = images(3)
    masks = torch.stack([make_mask(k, IMAGE, seed=1) for k in ("center", "top", "random50")])
    filled = mean_fill(train, x, masks)
    assert torch.equal(filled[~masks], x[~masks])
    torch.testing.assert_close(filled[masks], train.mean(0).expand_as(x)[masks])
    clamped = mean_fill(train, x, masks, bounds=(0.0, 0.1))
    assert clamped[masks].max() <= 0.1 and torch.equal(clamped[~masks], x[~masks])
    pixels = torch.randint(0, 4, (200, *IMAGE)).float()
    split = ff.datasets.base.Split(pixels, levels=4)
    expected = (pixels.mean(0) + 0.5) / 4
    filled = mean_fill(split, x[0], masks[1])
    assert (filled[masks[1]] - expected[masks[1]]).abs().max() < 0.05


def test_gaussian_fill_groups_masks_and_keeps_observed():
    train = torch.rand(300, *IMAGE)
    x = images(5).double()
    center = make_mask("center", IMAGE)  # twice: images with one mask share a factorisation
    masks = [center, make_mask("top", IMAGE), center, make_mask("random50", IMAGE, seed=7)]
    masks = torch.stack([*masks, torch.ones(IMAGE, dtype=torch.bool)])
    filled = gaussian_fill(train, x, masks)
    assert filled.dtype == x.dtype and torch.equal(filled[~masks], x[~masks])
    flat = train.reshape(300, 16).double()
    mean = flat.mean(0)
    covariance = (flat - mean).T @ (flat - mean) / 300 + 1e-3 * torch.eye(16)
    missing = masks.reshape(5, 16)
    expected = conditional_mean(mean, covariance, x.reshape(5, 16)[:4], missing[:4])
    torch.testing.assert_close(filled.reshape(5, 16)[:4], expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(filled[4].reshape(16), mean)


def test_psnr_known_values():
    truth = images(2, torch.float64)
    mask = make_mask("center", IMAGE)
    estimate = torch.where(mask, truth + 0.1, math.nan)  # observed entries are ignored
    torch.testing.assert_close(psnr(estimate, truth, mask), torch.full((2,), 20.0).double())
    torch.testing.assert_close(
        psnr(255 * estimate, 255 * truth, mask.expand(2, *IMAGE), peak=255.0),
        torch.full((2,), 20.0).double(),
    )
    exact = psnr(truth, truth, mask)
    assert exact.shape == (2,) and torch.isinf(exact).all() and (exact > 0).all()
    assert torch.isnan(psnr(truth, truth, torch.zeros(IMAGE, dtype=torch.bool))).all()
    with pytest.raises(ValueError, match="mask"):
        psnr(truth, truth, mask[0])


# --- the figure ------------------------------------------------------------------------------


def test_plot_inpainting(tmp_path):
    flow = image_flow()
    masks = torch.stack([make_mask(k, IMAGE, seed=2) for k in ("center", "top", "random50")] * 2)
    x = images(6)
    result = inpaint(flow, x, masks, restarts=2, steps=5)
    three = plots.plot_inpainting(x, masks, result.image, tmp_path / "three.png")
    methods = [("mean", mean_fill(x, x, masks)), ("Gaussian", gaussian_fill(x, x, masks))]
    five = plots.plot_inpainting(
        x, masks, result.image, tmp_path / "five", methods=methods, title="inpainting"
    )
    assert three.suffix == ".png" and five.suffix == ""
    small, large = imread(three), imread(five)
    assert large.shape[0] > small.shape[0] and large.shape[1] == small.shape[1]
    red = (small[..., 0] > 0.9) & (small[..., 1] < 0.1) & (small[..., 2] < 0.1)
    assert red.sum() > 0, "missing pixels are painted red"
    flat = plots.plot_inpainting(
        x.reshape(6, 16), masks[0].reshape(16), result.image.reshape(6, 16), tmp_path / "f.png"
    )
    assert flat.is_file()
    with pytest.raises(ValueError, match="'Gaussian' images"):
        plots.plot_inpainting(x, masks, x, tmp_path / "bad.png", methods=[("Gaussian", x[:2])])
