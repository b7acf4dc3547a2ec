"""flowforge.inference.targets: the paper's energies against hand evaluations, log Z by quadrature
against closed forms, samplers against their densities, and behaviour far out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowforge.inference import targets
from flowforge.inference.targets import quadrature_log_normalizer

NAMES = ["u1", "u2", "u3", "u4", "banana", "funnel", "gmm", "gaussian"]
ENERGIES = ["u1", "u2", "u3", "u4"]
# The documented confining term, written out here: c(z1) = (z1 / 5)^32.
CONFINE = 5.0
POWER = 32


def gauss_tail(t: float) -> float:
    """P(X > t) for a standard normal X."""
    return 0.5 * math.erfc(t / math.sqrt(2))


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_descriptions():
    assert list(targets.TARGETS) == NAMES
    for name, description in targets.TARGETS.items():
        assert description and "\n" not in description
        target = targets.get(name)
        assert isinstance(target, targets.Target)
        assert target.name == name


def test_get_rejects_an_unknown_name_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown target 'u5'") as info:
        targets.get("u5")
    for name in NAMES:
        assert name in str(info.value)


def test_get_passes_arguments_and_checks_dimensions():
    assert targets.get("gaussian", dim=3, seed=1).dim == 3
    assert targets.get("funnel", dim=10).dim == 10
    assert targets.get("u1", dim=2).dim == 2
    with pytest.raises(ValueError, match="2-D"):
        targets.get("u3", dim=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'scale'"):
        targets.get("u1", scale=2.0)


# ---------------------------------------------------------------------------- the paper's U's


def paper_energy(name: str, z1: float, z2: float) -> float:
    """Rezende & Mohamed's table 1, typed in again with plain math (no confining term)."""
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        norm = math.sqrt(z1 * z1 + z2 * z2)
        bumps = math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        return 0.5 * ((norm - 2) / 0.4) ** 2 - math.log(bumps)
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        a = math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
        b = math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        return -math.log(a + b)
    a = math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
    b = math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    return -math.log(a + b)


POINTS = [(0.0, 0.0), (1.0, 0.5), (-2.3, 1.7), (3.1, -2.4), (0.7, -1.9), (1.2, -2.6), (-0.4, 0.3)]


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_matches_a_hand_evaluation(name):
    target = targets.get(name)
    z = torch.tensor(POINTS, dtype=torch.float64)
    got = target.log_prob(z)
    for (z1, z2), value in zip(POINTS, got.tolist(), strict=True):
        confine = 0.0 if name == "u1" else (z1 / CONFINE) ** POWER
        assert value == pytest.approx(-paper_energy(name, z1, z2) - confine, rel=1e-12, abs=1e-12)


def test_energy_hand_values():
    """A few values worked out by hand, so that a slip shared by paper_energy and the code
    would still show: at z = 0, U1 = 12.5 - ln(2 e^{-50/9}); U2 = 0; U3 = -ln(1 + e^{-w2^2/
    (2 * 0.35^2)}) with w2 = 3 e^{-1/0.72}."""
    z = torch.zeros(1, 2, dtype=torch.float64)
    assert targets.get("u1").log_prob(z).item() == pytest.approx(-(12.5 - math.log(2) + 50 / 9))
    assert targets.get("u2").log_prob(z).item() == 0.0
    w2 = 3 * math.exp(-1 / 0.72)
    expected = math.log(1 + math.exp(-(w2**2) / (2 * 0.35**2)))
    assert targets.get("u3").log_prob(z).item() == pytest.approx(expected, rel=1e-12)
    # U4 at z = (1, 0): w1 = 1, w3 = 1.5, so U4 = -ln(e^{-1/0.32} + e^{-0.25/0.245}).
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    expected = math.log(math.exp(-1 / 0.32) + math.exp(-0.25 / 0.245)) - 0.2**32
    assert targets.get("u4").log_prob(z).item() == pytest.approx(expected, rel=1e-12)


def paper_energy_grid(name: str, z: torch.Tensor) -> torch.Tensor:
    """The same table, vectorised (float64), for a grid of points."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = torch.sin(math.pi * z1 / 2)
    gauss = lambda x, s: torch.exp(-0.5 * (x / s) ** 2)  # noqa: E731
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        w2 = 3 * gauss(z1 - 1, 0.6)
        return -torch.log(gauss(z2 - w1, 0.35) + gauss(z2 - w1 + w2, 0.35))
    w3 = 3 / (1 + torch.exp(-(z1 - 1) / 0.3))
    return -torch.log(gauss(z2 - w1, 0.4) + gauss(z2 - w1 + w3, 0.35))


@pytest.mark.parametrize("name", ["u2", "u3", "u4"])
def test_confinement_changes_the_picture_by_at_most_the_documented_amount(name):
    """Docstrings: c adds at most 7.9e-4 to U in [-4, 4]^2 and 8.0e-8 where |z1| <= 3."""
    axis = torch.linspace(-4, 4, 161, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    change = -targets.get(name).log_prob(z) - paper_energy_grid(name, z)
    assert change.min() >= -1e-12
    assert change.max() <= 7.93e-4
    assert change.max() >= 7.9e-4  # reached at |z1| = 4
    assert change[z[:, 0].abs() <= 3].max() <= 8.0e-8


def test_confinement_decays_as_documented():
    z1 = torch.tensor([3.0, 4.0, 5.0, 5.5, 6.0], dtype=torch.float64)
    c = targets.confinement(z1)
    assert c[0] == pytest.approx(0.6**32) and c[0] < 8.0e-8
    assert c[1] == pytest.approx(0.8**32) and c[1] < 7.93e-4
    assert c[2] == pytest.approx(1.0)
    assert c[3] > 21 and c[4] > 341


# ---------------------------------------------------------------------------- quadrature


def test_quadrature_of_a_gaussian_matches_the_closed_form_within_its_error_estimate():
    covariance = [[1.0, 0.6], [0.6, 0.5]]
    det = 1.0 * 0.5 - 0.6 * 0.6
    inverse = torch.tensor([[0.5, -0.6], [-0.6, 1.0]], dtype=torch.float64) / det
    offset = 0.7

    def log_prob(z):
        return -0.5 * ((z @ inverse) * z).sum(1) + offset

    exact = 0.5 * math.log((2 * math.pi) ** 2 * det) + offset
    # 10 standard deviations each way: the mass outside is < 4 P(X > 10) ~ 3e-23.
    half = [10 * math.sqrt(covariance[i][i]) for i in range(2)]
    bounds = ((-half[0], half[0]), (-half[1], half[1]))
    errors = []
    for step in (0.8, 0.5, 0.3, 0.1):
        log_z, error = quadrature_log_normalizer(log_prob, bounds, step)
        assert abs(log_z - exact) <= error
        if error > 1e-6:  # the estimate |Q_h - Q_h/2| is far above the error of Q_h/2
            assert abs(log_z - exact) < 0.01 * error
        errors.append(error)
    assert errors[0] > 1e-4  # the coarse steps are really tested
    assert errors[-1] < 1e-11


def test_quadrature_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        quadrature_log_normalizer(lambda z: z[:, 0], ((0, 1),), 0.1)
    with pytest.raises(ValueError, match="step"):
        quadrature_log_normalizer(lambda z: z[:, 0], ((0, 1), (0, 1)), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        quadrature_log_normalizer(lambda z: z[:, 0].log(), ((-1, 1), (0, 1)), 0.1)


def closed_form_wave_log_z(name: str) -> float:
    """U2..U4: each z2-bump integrates to s sqrt(2 pi) for every z1, and the integral of
    exp(-(z1/5)^32) is 2 * 5 * Gamma(1 + 1/32)."""
    widths = {"u2": 0.4, "u3": 0.35 + 0.35, "u4": 0.4 + 0.35}[name]
    return math.log(widths * math.sqrt(2 * math.pi) * 2 * CONFINE * math.gamma(1 + 1 / POWER))


def polar_log_z_u1(nodes: int) -> float:
    """U1's log Z in polar coordinates: Gauss-Legendre in r on [0, 8], trapezoid (spectrally
    accurate for a periodic integrand) in the angle."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    r, w = 4 * (x + 1), 4 * w
    theta = 2 * math.pi * np.arange(2 * nodes) / (2 * nodes)
    z1 = r[:, None] * np.cos(theta)[None, :]
    bumps = np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
    ring = r * np.exp(-0.5 * ((r - 2) / 0.4) ** 2)
    return math.log((w * ring * bumps.mean(1)).sum() * 2 * math.pi)


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_log_normalizer_is_within_its_bound(name):
    target = targets.get(name)
    log_z, bound = target.log_normalizer(), target.log_normalizer_error()
    discretisation, outside = target.log_normalizer_error_terms()
    assert bound == discretisation + outside
    assert 0 < bound <= 1e-4
    assert outside < 1e-20
    # Converged: the rule at twice the step agrees within both bounds.
    coarse, coarse_error = quadrature_log_normalizer(target.log_prob, target.quadrature_bounds, 0.1)
    assert abs(coarse - log_z) <= bound + coarse_error
    # Against an independent value of log Z over the whole plane.
    if name == "u1":
        reference = polar_log_z_u1(400)
        assert abs(reference - polar_log_z_u1(300)) < 1e-13
    else:
        reference = closed_form_wave_log_z(name)
    assert abs(log_z - reference) <= bound + 1e-13


def test_energy_log_normalizer_is_cached_and_energies_have_no_sampler():
    target = targets.get("u3")
    assert target.log_normalizer() == targets.get("u3").log_normalizer()
    for name in ENERGIES:
        assert targets.get(name).sample(10) is None


def test_energy_tail_bounds_by_hand():
    """The mass outside the boxes, bounded here from the documented boxes."""
    # U1, box [-6, 6]^2: outside lies at r > 6; the bump factor is <= 2.
    s = 0.4
    radial = s * s * math.exp(-50) + 2 * s * math.sqrt(math.pi / 2) * math.erfc(10 / math.sqrt(2))
    u1 = 2 * 2 * math.pi * radial
    assert math.isclose(targets.get("u1").tail_mass(), u1, rel_tol=1e-9, abs_tol=0)
    # U2, box [-6, 6] x [-5, 5]: 10 widths past the wave; z1 tail of exp(-c) beyond 6.
    slope = POWER / CONFINE * (6 / CONFINE) ** (POWER - 1)
    z1_tail = 2 * math.exp(-((6 / CONFINE) ** POWER)) / slope
    mass = 2 * CONFINE * math.gamma(1 + 1 / POWER)
    u2 = 0.4 * math.sqrt(2 * math.pi) * (z1_tail + mass * 2 * gauss_tail(10))
    assert math.isclose(targets.get("u2").tail_mass(), u2, rel_tol=1e-9, abs_tol=0)


SMALL_BOXES = [
    ("u1", ((-3.0, 3.0), (-3.0, 3.0))),
    ("u1", ((-4.0, 4.0), (-4.0, 4.0))),
    ("u2", ((-5.0, 5.0), (-2.0, 2.0))),
    ("u3", ((-5.2, 5.2), (-5.0, 2.0))),
    ("u4", ((-5.0, 5.0), (-5.0, 2.0))),
    ("u4", ((-5.5, 5.5), (-6.0, 3.0))),
]


@pytest.mark.parametrize(("name", "box"), SMALL_BOXES)
def test_energy_tail_bound_holds_where_the_tail_is_not_negligible(name, box):
    """On boxes too small for log Z the mass outside is large enough to measure (the whole
    plane's Z minus the box's): the bound must cover it."""
    small = type("Small", (type(targets.get(name)),), {"quadrature_bounds": box})()
    log_z_box, _ = quadrature_log_normalizer(small.log_prob, box, 0.02)
    exact = polar_log_z_u1(400) if name == "u1" else closed_form_wave_log_z(name)
    outside = math.exp(exact) - math.exp(log_z_box)
    assert outside > 1e-8
    assert outside <= small.tail_mass() <= 1000 * outside


# ---------------------------------------------------------------------------- closed forms


def test_closed_form_log_normalizers():
    assert targets.get("banana").log_normalizer() == pytest.approx(math.log(2 * math.pi * 0.8))
    assert targets.get("funnel").log_normalizer() == pytest.approx(math.log(6 * math.pi))
    assert targets.get("funnel", dim=10).log_normalizer() == pytest.approx(
        math.log(3) + 5 * math.log(2 * math.pi)
    )
    assert targets.get("gmm").log_normalizer() == pytest.approx(math.log(2 * math.pi))
    for name in ("banana", "funnel", "gmm", "gaussian"):
        assert targets.get(name).log_normalizer_error() == 0.0


CLOSED_FORM_CASES = [
    # (name, kwargs, quadrature box, step, bound on the relative mass outside the box)
    ("banana", {}, ((-16.0, 16.0), (-4.2, 67.2)), 0.1, 4 * gauss_tail(8)),
    ("banana", {"a": 1.0, "b": -1.0, "sigma": 0.7}, ((-8.0, 8.0), (-69.0, 6.6)), 0.15, 1e-14),
    ("gmm", {}, ((-8.0, 8.0), (-8.0, 8.0)), 0.1, 4 * gauss_tail(8.5)),
    (
        "gmm",
        {"means": [[0, 0], [3, 1]], "stds": [[0.5, 1.0], [0.8, 0.3]], "weights": [2, 5]},
        ((-8.0, 11.0), (-10.0, 10.0)),
        0.1,
        4 * gauss_tail(9),
    ),
    ("gaussian", {"seed": 0}, None, 0.1, 4 * gauss_tail(10)),
    ("gaussian", {"seed": 3}, None, 0.1, 4 * gauss_tail(10)),
]


@pytest.mark.parametrize(("name", "kwargs", "box", "step", "outside"), CLOSED_FORM_CASES)
def test_closed_form_log_normalizer_agrees_with_quadrature(name, kwargs, box, step, outside):
    target = targets.get(name, **kwargs)
    if box is None:  # a Gaussian: 10 standard deviations about the mean
        half = 10 * target.covariance.diagonal().sqrt()
        box = tuple(
            (m - h, m + h) for m, h in zip(target.mean.tolist(), half.tolist(), strict=True)
        )
    log_z, error = quadrature_log_normalizer(target.log_prob, box, step)
    assert error < 1e-6
    assert abs(log_z - target.log_normalizer()) <= error + outside


def test_funnel_log_normalizer_agrees_with_quadrature():
    """The funnel's neck and mouth defeat a uniform grid in (v, x), so integrate in
    (v, u) with x = e^{v/2} u, dx = e^{v/2} du: the integrand is then a Gaussian, with
    8 standard deviations of v (3) and u (1) in the box."""
    target = targets.get("funnel")

    def log_integrand(vu):
        v, u = vu[:, 0], vu[:, 1]
        return target.log_prob(torch.stack([v, torch.exp(0.5 * v) * u], 1)) + 0.5 * v

    log_z, error = quadrature_log_normalizer(log_integrand, ((-24.0, 24.0), (-8.0, 8.0)), 0.1)
    assert abs(log_z - math.log(6 * math.pi)) <= error + 4 * gauss_tail(8)


# ---------------------------------------------------------------------------- samplers


def gmm_entropy_by_grid() -> float:
    """H of the default mixture, -sum p log p h^2 on a grid, p written out with numpy."""
    means = np.array([[-2.0, -1.5], [2.0, -1.5], [0.0, 2.0]])
    stds = np.array([0.5, 0.7, 0.4])
    weights = np.array([0.5, 0.3, 0.2])
    h = 0.02
    axis = -8 + h * (np.arange(800) + 0.5)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    p = np.zeros_like(x)
    for mean, std, weight in zip(means, stds, weights, strict=True):
        sq = ((x - mean[0]) ** 2 + (y - mean[1]) ** 2) / std**2
        p += weight * np.exp(-0.5 * sq) / (2 * math.pi * std**2)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(-plogp.sum() * h * h)


def reference_entropy(name: str, target) -> float:
    """Differential entropies from the definitions, not from the targets' code."""
    e = math.log(2 * math.pi * math.e)
    if name == "banana":
        return 0.5 * (e + math.log(2.0**2)) + 0.5 * (e + math.log(0.4**2))
    if name == "funnel":
        return 0.5 * (e + math.log(9.0)) + 0.5 * (target.dim - 1) * e
    if name == "gaussian":
        return 0.5 * (target.dim * e + torch.linalg.slogdet(target.covariance)[1].item())
    return gmm_entropy_by_grid()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("banana", {}),
        ("funnel", {}),
        ("funnel", {"dim": 4}),
        ("gmm", {}),
        ("gaussian", {"dim": 2}),
        ("gaussian", {"dim": 5, "seed": 2}),
    ],
)
def test_sampler_matches_log_prob_through_the_entropy(name, kwargs):
    """E_p[log p~(z) - log Z] = -H(p) over exact samples, within 4.5 standard errors."""
    target = targets.get(name, **kwargs)
    n = 100_000
    z = target.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert z.shape == (n, target.dim) and z.dtype == torch.float64
    log_p = target.log_prob(z) - target.log_normalizer()
    standard_error = log_p.std().item() / math.sqrt(n)
    assert abs(log_p.mean().item() + reference_entropy(name, target)) < 4.5 * standard_error


def test_gmm_entropy_reference_is_converged():
    """The grid entropy of the mixture is close to the well-separated approximation
    H(weights) + sum_k w_k H_k, and the mixture's cross terms are small."""
    weights = np.array([0.5, 0.3, 0.2])
    stds = np.array([0.5, 0.7, 0.4])
    approx = (weights * (np.log(2 * math.pi * math.e * stds**2) - np.log(weights))).sum()
    assert abs(gmm_entropy_by_grid() - approx) < 0.01


def cell_probabilities(target, edges_x, edges_y, sub: int) -> np.ndarray:
    """P(cell) under target.log_prob / Z: midpoint rule with sub x sub points per cell."""
    hx, hy = edges_x[1] - edges_x[0], edges_y[1] - edges_y[0]
    fine_x = edges_x[0] + (np.arange((len(edges_x) - 1) * sub) + 0.5) * hx / sub
    fine_y = edges_y[0] + (np.arange((len(edges_y) - 1) * sub) + 0.5) * hy / sub
    grid = torch.cartesian_prod(torch.from_numpy(fine_x), torch.from_numpy(fine_y))
    density = torch.exp(target.log_prob(grid) - target.log_normalizer()).numpy()
    density = density.reshape(len(fine_x), len(fine_y)) * hx * hy / sub**2
    return density.reshape(len(edges_x) - 1, sub, len(edges_y) - 1, sub).sum((1, 3))


@pytest.mark.parametrize(("name", "kwargs"), [("gmm", {}), ("banana", {}), ("gaussian", {})])
def test_sampler_passes_a_chi_square_test_against_the_density(name, kwargs):
    target = targets.get(name, **kwargs)
    (x0, x1), (y0, y1) = target.bounds
    edges_x, edges_y = np.linspace(x0, x1, 13), np.linspace(y0, y1, 13)
    expected_p = cell_probabilities(target, edges_x, edges_y, sub=24).ravel()
    n = 40_000
    z = target.sample(n, torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    counts = np.histogram2d(z[:, 0], z[:, 1], bins=[edges_x, edges_y])[0].ravel()
    expected = n * expected_p
    big = expected >= 5  # pool small cells and everything outside the box into one bin
    observed = np.append(counts[big], n - counts[big].sum())
    expected = np.append(expected[big], n - expected[big].sum())
    assert big.sum() >= 20
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_funnel_sampler_follows_its_law():
    z = targets.get("funnel").sample(50_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    v, x = z[:, 0].numpy(), z[:, 1].numpy()
    assert stats.kstest(v / 3, "norm").pvalue > 1e-3
    assert stats.kstest(x * np.exp(-v / 2), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(v, x * np.exp(-v / 2))[0, 1]) < 0.02


def test_gaussian_sampler_moments_and_random_covariance():
    target = targets.get("gaussian", dim=4, seed=7)
    eigenvalues = torch.linalg.eigvalsh(target.covariance)
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(30.0, rel=1e-9)
    assert eigenvalues.min() == pytest.approx(0.1, rel=1e-9)
    assert torch.equal(target.covariance, targets.get("gaussian", dim=4, seed=7).covariance)
    assert not torch.equal(target.mean, targets.get("gaussian", dim=4, seed=8).mean)
    n = 200_000
    z = target.sample(n, torch.Generator().manual_seed(3), dtype=torch.float64)
    scale = target.covariance.diagonal().sqrt()
    tolerance = (5 * scale / math.sqrt(n)).max().item()
    torch.testing.assert_close(z.mean(0), target.mean, atol=tolerance, rtol=0)
    normalise = torch.outer(scale, scale)
    torch.testing.assert_close(
        z.T.cov() / normalise, target.covariance / normalise, atol=0.015, rtol=0
    )


def test_explicit_gaussian_matches_torch_distributions():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    covariance = torch.tensor([[2.0, 0.3, 0.1], [0.3, 1.0, -0.4], [0.1, -0.4, 0.5]])
    target = targets.get("gaussian", mean=mean, covariance=covariance)
    assert target.dim == 3 and target.bounds is None
    reference = torch.distributions.MultivariateNormal(mean, covariance.double())
    z = torch.randn(50, 3, dtype=torch.float64) * 2
    torch.testing.assert_close(target.log_prob(z) - target.log_normalizer(), reference.log_prob(z))
    log_det = torch.logdet(2 * math.pi * covariance.double()).item()
    assert target.log_normalizer() == pytest.approx(0.5 * log_det, rel=1e-12)
    with pytest.raises(ValueError, match="positive definite"):
        targets.get("gaussian", covariance=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        targets.get("gaussian", covariance=[[1.0, 0.2], [0.1, 1.0]])
    with pytest.raises(ValueError, match="mean"):
        targets.get("gaussian", mean=[0.0], covariance=torch.eye(2))


def test_samples_are_reproducible_and_default_to_the_default_dtype():
    for name in ("banana", "funnel", "gmm", "gaussian"):
        target = targets.get(name)
        a = target.sample(100, torch.Generator().manual_seed(0))
        b = target.sample(100, torch.Generator().manual_seed(0))
        assert a.dtype == torch.get_default_dtype() and a.shape == (100, target.dim)
        assert torch.equal(a, b)


def test_gmm_weights_set_the_component_masses():
    target = targets.get("gmm")
    z = target.sample(60_000, torch.Generator().manual_seed(4), dtype=torch.float64)
    nearest = torch.cdist(z, target.means).argmin(1)
    fractions = torch.bincount(nearest, minlength=3).double() / len(z)
    torch.testing.assert_close(fractions, torch.tensor([0.5, 0.3, 0.2]).double(), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="weights"):
        targets.get("gmm", weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="stds"):
        targets.get("gmm", stds=[1.0, 2.0])


# ---------------------------------------------------------------------------- log_prob


def every_target() -> list[targets.Target]:
    return [targets.get(name) for name in NAMES] + [
        targets.get("funnel", dim=5),
        targets.get("gaussian", dim=6, seed=1),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_is_finite_and_differentiable_far_out(dtype):
    for target in every_target():
        directions = torch.randn(16, target.dim, dtype=torch.float64)
        directions[: 2 * target.dim] = torch.cat([torch.eye(target.dim), -torch.eye(target.dim)])
        z = (50 * directions / directions.norm(dim=1, keepdim=True)).to(dtype)
        z = torch.cat([z, torch.zeros(1, target.dim, dtype=dtype)]).requires_grad_()
        log_p = target.log_prob(z)
        assert log_p.dtype == dtype and log_p.shape == (17,)
        assert torch.isfinite(log_p).all(), target
        (grad,) = torch.autograd.grad(log_p.sum(), z)
        assert torch.isfinite(grad).all(), target


def test_log_prob_gradients_match_finite_differences():
    for target in every_target():
        z = (0.7 * torch.randn(3, target.dim, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(target.log_prob, (z,)), target


def test_log_prob_keeps_the_dtype_and_agrees_across_dtypes():
    for target in every_target():
        z = torch.randn(200, target.dim, dtype=torch.float64) * 1.5
        exact = target.log_prob(z)
        single = target.log_prob(z.float())
        assert single.dtype == torch.float32 and exact.dtype == torch.float64
        torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=1e-4)
        batched = target.log_prob(z.reshape(4, 50, target.dim))
        torch.testing.assert_close(batched, exact.reshape(4, 50))


def test_log_prob_checks_its_input():
    target = targets.get("u1")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        target.log_prob(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="floating"):
        target.log_prob(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        target.log_prob([[0.0, 0.0]])


def test_plotting_boxes():
    for name in ENERGIES:
        assert targets.get(name).bounds == ((-4.0, 4.0), (-4.0, 4.0))
    for name in ("banana", "funnel", "gmm", "gaussian"):
        bounds = targets.get(name).bounds
        assert len(bounds) == 2 and all(low < high for low, high in bounds)
    assert targets.get("gaussian", dim=3).bounds is None
    assert targets.get("funnel", dim=3).bounds is None
