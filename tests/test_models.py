"""Every model builder: a normalised density, sampling consistent with log_prob, exact moments
for flows that are exactly affine, and the Flow's distribution and module behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.transforms import ActNorm

from cases import randomize

BUILDERS = {
    "realnvp": lambda **kw: ff.models.realnvp(dim=2, layers=4, hidden=(16, 16), **kw),
    "realnvp-odd-even": lambda **kw: ff.models.realnvp(
        dim=2, layers=4, hidden=(16, 16), mask="odd-even", **kw
    ),
    "realnvp-actnorm": lambda **kw: ff.models.realnvp(
        dim=2, layers=4, hidden=(16, 16), actnorm=True, **kw
    ),
    "nice": lambda **kw: ff.models.nice(dim=2, layers=4, hidden=(16,) * 3, **kw),
    "nice-actnorm": lambda **kw: ff.models.nice(dim=2, layers=4, hidden=(16,), actnorm=True, **kw),
    "maf": lambda **kw: ff.models.maf(dim=2, layers=3, hidden=(16, 16), **kw),
    "maf-residual-actnorm": lambda **kw: ff.models.maf(
        dim=2, layers=3, hidden=(16, 16), residual=True, actnorm=True, **kw
    ),
    "iaf": lambda **kw: ff.models.iaf(dim=2, layers=3, hidden=(16, 16), **kw),
    "nsf": lambda **kw: ff.models.nsf(dim=2, layers=4, hidden=(16, 16), tail_bound=3.0, **kw),
    "nsf-autoregressive": lambda **kw: ff.models.nsf(
        dim=2, layers=2, hidden=(16, 16), tail_bound=3.0, autoregressive=True, **kw
    ),
    "planar": lambda **kw: ff.models.planar(dim=2, layers=8, **kw),
    "radial": lambda **kw: ff.models.radial(dim=2, layers=8, **kw),
}


def test_every_builder_is_tested():
    from test_continuous import CONTINUOUS_BUILDERS  # the continuous flows, tested there
    from test_image_models import IMAGE_BUILDERS  # the image flows, tested there

    tested = {name.split("-")[0] for name in BUILDERS} | set(IMAGE_BUILDERS)
    tested |= set(CONTINUOUS_BUILDERS)
    assert tested == set(ff.models.MODELS)


def random_flow(name: str, seed: int = 0, scale: float = 0.3, **kwargs) -> ff.Flow:
    torch.manual_seed(seed)
    return randomize(BUILDERS[name](**kwargs), seed=seed, scale=scale).double()


@pytest.mark.parametrize("name", BUILDERS)
def test_density_integrates_to_one(name):
    # Milder noise with ActNorm (four random rescalings would move mass out of the box) and
    # splines (strong noise makes bins narrower than the grid's cells).
    mild = "actnorm" in name or name.startswith("nsf")
    flow = random_flow(name, scale=0.15 if mild else 0.3)
    half_width, points = 20.0, 1001
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = flow.log_prob(torch.stack((xx, yy), dim=-1)).exp()
    cell = (grid[1] - grid[0]) ** 2
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid).item()
    assert density.shape == (points, points)
    assert abs(mass - 1) < 1e-2, f"{name}: density integrates to {mass}"
    assert density.max() * cell < 0.1, "density too peaked for this grid to resolve"


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("base", ["normal", "logistic", "diag-normal"])
def test_sample_and_log_prob_agrees_with_log_prob(name, base):
    flow = random_flow(name, seed=1, base=base)
    x, log_q = flow.sample_and_log_prob(500)
    assert x.shape == (500, 2) and log_q.shape == (500,)
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", BUILDERS)
def test_sample_and_log_prob_is_reparameterised(name):
    flow = random_flow(name, seed=2, base="diag-normal")
    x, log_q = flow.sample_and_log_prob(64)
    (x.sum() + log_q.sum()).backward()
    for p_name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {p_name}"


def make_affine(flow: ff.Flow, seed: int) -> ff.Flow:
    """Make every layer of a flow an affine map with random coefficients: conditioners output
    a constant (zero last-layer weights, random bias); planar/radial layers the identity; the
    learnable base a random diagonal Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, ff.nn.MLP):
                last = module[-1]
                last.weight.zero_()
                last.bias.copy_(0.5 * torch.randn(last.bias.shape, generator=generator))
            if isinstance(module, ff.transforms.Planar):
                module.u.copy_(math.log(math.e - 1) * module.w / (module.w @ module.w))
            if isinstance(module, ff.transforms.Radial):
                module.beta_raw.copy_(module.alpha_raw)
            if isinstance(module, ff.transforms.DiagonalScaling | ff.DiagNormal):
                for p in module.parameters():
                    p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return flow


# A spline with constant parameters is not affine; the spline flows are left out.
@pytest.mark.parametrize("name", [name for name in BUILDERS if not name.startswith("nsf")])
def test_samples_of_an_affine_flow_have_its_moments(name):
    """x = A z + b exactly; the sample mean and covariance must match b and A Cov(z) A^T."""
    base = "logistic" if name == "nice" else "diag-normal"
    torch.manual_seed(3)
    flow = make_affine(BUILDERS[name](base=base).double(), seed=3)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    b = flow.transform.inverse(zero)[0][0]
    A = torch.autograd.functional.jacobian(lambda z: flow.transform.inverse(z)[0], zero)[0, :, 0]
    if base == "logistic":
        base_mean, base_cov = torch.zeros(2), torch.eye(2) * math.pi**2 / 3
    else:
        base_mean = flow.base.loc.detach()
        base_cov = torch.diag((2 * flow.base.log_scale.detach()).exp())
    mean = A @ base_mean.double() + b
    cov = A @ base_cov.double() @ A.T

    n = 200_000
    samples = flow.sample(n)
    std_err = cov.diagonal().sqrt() / math.sqrt(n)
    assert ((samples.mean(0) - mean).abs() < 5 * std_err).all()
    # Covariance entries: standard error below 2% of the scale for n = 2e5 (logistic tails too).
    scale = cov.diagonal().sqrt()
    normalise = torch.outer(scale, scale)
    torch.testing.assert_close(samples.T.cov() / normalise, cov / normalise, atol=0.02, rtol=0)


def test_flow_is_a_module_and_a_distribution():
    flow = ff.models.realnvp(dim=3, layers=2, hidden=(8,))
    assert isinstance(flow, nn.Module)
    assert isinstance(flow, torch.distributions.Distribution)
    assert flow.event_shape == (3,) and flow.batch_shape == ()
    assert flow.sample().shape == (3,)
    assert flow.sample(7).shape == (7, 3)
    assert flow.sample((2, 5)).shape == (2, 5, 3)
    assert flow.rsample((4,)).shape == (4, 3)
    x = torch.randn(2, 5, 3)
    assert flow.log_prob(x).shape == (2, 5)
    assert flow.log_prob(x[0, 0]).shape == ()
    torch.testing.assert_close(flow(x), flow.log_prob(x))
    assert not flow.sample(4).requires_grad
    assert flow.rsample(4).requires_grad


def test_flow_converts_dtype_and_device_like_any_module():
    flow = random_flow("planar", seed=4).float()
    assert flow.dtype == torch.float32 and flow.sample(3).dtype == torch.float32
    flow.double()
    assert flow.dtype == torch.float64 and flow.sample(3).dtype == torch.float64
    flow.to("cpu")
    assert flow.device == torch.device("cpu")
    assert flow.log_prob(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_a_fresh_coupling_flow_is_its_base():
    """Zero-initialised conditioners: log p(x) equals the base density at x."""
    x = torch.randn(100, 4)
    flow = ff.models.realnvp(dim=4)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(flow.log_prob(x), standard)
    nice = ff.models.nice(dim=4, hidden=(8,))
    torch.testing.assert_close(nice.log_prob(x), nice.base.log_prob(x))


def test_usage_from_the_issue():
    flow = ff.models.realnvp(dim=2, layers=8, hidden=(64, 64))
    randomize(flow, scale=0.1)
    x = torch.randn(512, 2)
    assert flow.log_prob(x).shape == (512,)
    z, logdet = flow.transform(x)
    assert z.shape == (512, 2) and logdet.shape == (512,)
    x2, _ = flow.transform.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    assert flow.sample(1000).shape == (1000, 2)
    s, log_q = flow.sample_and_log_prob(1000)
    assert s.shape == (1000, 2) and log_q.shape == (1000,) and log_q.requires_grad


def test_nice_paper_architecture():
    flow = ff.models.nice(784)
    couplings = flow.transform.transforms[:-1]
    assert len(couplings) == 4
    assert isinstance(flow.transform.transforms[-1], ff.transforms.DiagonalScaling)
    assert isinstance(flow.base, ff.StandardLogistic)
    widths = [m.out_features for m in couplings[0].conditioner if isinstance(m, nn.Linear)]
    assert widths == [1000] * 5 + [392]
    kept = [c.partition.mask for c in couplings]
    assert kept[0][0] and not kept[1][0] and kept[2][0]  # odd/even alternate


def test_config_rebuilds_the_same_architecture():
    for flow in [
        ff.models.realnvp(dim=3, layers=3, hidden=(8, 8), mask="odd-even"),
        ff.models.nice(dim=6, hidden=(8,)),
        ff.models.planar(dim=2, layers=5, base="diag-normal"),
        ff.models.radial(dim=2, layers=4),
    ]:
        rebuilt = ff.models.build(flow.config)
        assert rebuilt.config == flow.config
        shapes = {k: v.shape for k, v in flow.state_dict().items()}
        assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
        rebuilt.load_state_dict(flow.state_dict())
        x = torch.randn(5, flow.event_shape[0])
        torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))


def test_actnorm_in_a_flow_initialises_from_the_first_batch():
    dim = 3
    flow = ff.Flow(
        ff.transforms.Compose(ActNorm(dim), ff.transforms.DiagonalScaling(dim)),
        ff.StandardNormal(dim),
    )
    x = 3 + 2 * torch.randn(1000, dim)
    z, _ = flow.transform(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(dim), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(dim), atol=1e-5, rtol=0)


def test_a_checkpoint_from_before_a_builder_argument_resumes(tmp_path):
    """A model saved before a builder argument existed (its config lacks it) was built with
    that argument's default: resuming with today's builder is not refused."""
    x = torch.randn(64, 4)
    old = ff.models.nice(4, layers=2, hidden=(8,))
    old.config = {k: v for k, v in old.config.items() if k != "scale_gain"}  # as saved before
    ff.fit(old, x, epochs=1, batch_size=32, checkpoint=tmp_path, progress=False)
    assert ff.models.with_defaults(old.config) == ff.models.nice(4, layers=2, hidden=(8,)).config
    new = ff.models.nice(4, layers=2, hidden=(8,))
    history = ff.fit(new, x, epochs=2, batch_size=32, checkpoint=tmp_path, resume=True,
                     progress=False)  # fmt: skip
    assert len(history.epochs) == 2
    other = ff.models.nice(4, layers=2, hidden=(8,), scale_gain=2.0)  # a real change: refused
    with pytest.raises(ValueError, match=r"the model changed \(scale_gain 1.0 -> 2.0\)"):
        ff.fit(other, x, epochs=3, checkpoint=tmp_path, resume=True, progress=False)
