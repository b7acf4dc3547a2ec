"""flowforge.datasets: toy densities against independent integrals, samplers against their
densities, stored entropies, splits, and the image loaders."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from flowforge import datasets
from flowforge.datasets import images, toys

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"
TOY_NAMES = [
    "two-moons",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "rings",
    "2spirals",
    "swissroll",
    "two-gaussians",
]
# Written here from the documented parameters, not read from the code: the smallest length
# scale of each toy (noise std; grid cell for the checkerboard) and a box holding its mass.
SCALE = {
    "two-moons": 0.1,
    "8gaussians": 0.5 / math.sqrt(2),
    "checkerboard": 1 / 16,
    "pinwheel": 0.2,
    "rings": 0.08,
    "2spirals": 0.1,
    "swissroll": 0.2,
    "two-gaussians": 1.0,
}
HALF_WIDTH = {
    "two-moons": 4.0,
    "8gaussians": 6.5,
    "checkerboard": 3.0,
    "pinwheel": 6.5,
    "rings": 4.5,
    "2spirals": 5.0,
    "swissroll": 5.0,
    "two-gaussians": 11.0,
}


def midpoint_grid(half_width: float, step: float) -> tuple[torch.Tensor, float, int]:
    """Cell midpoints of [-w, w]^2 (x-major), the cell area, and the cells per side."""
    count = round(2 * half_width / step)
    h = 2 * half_width / count
    axis = -half_width + (torch.arange(count, dtype=torch.float64) + 0.5) * h
    return torch.cartesian_prod(axis, axis), h * h, count


# ---------------------------------------------------------------------------- toy densities


def test_names():
    assert list(toys.TOYS) == TOY_NAMES
    assert set(toys.ENTROPY) == set(TOY_NAMES)
    assert list(datasets.DATASETS) == [*TOY_NAMES, "digits", "mnist", "cifar10"]
    assert all(isinstance(v, str) and v for v in datasets.DATASETS.values())


@pytest.mark.parametrize("name", TOY_NAMES)
def test_density_integrates_to_one_and_entropy_matches_grid(name):
    """Midpoint rule on a box and step chosen here (not the module's): mass 1, and
    -sum p log p h^2 equal to the stored entropy."""
    toy = toys.TOYS[name]
    grid, area, _ = midpoint_grid(HALF_WIDTH[name], SCALE[name] / 3)
    log_p = toy.log_prob(grid)
    p = log_p.exp()
    mass = (p.sum() * area).item()
    entropy = -(torch.where(p > 0, p * log_p, 0.0).sum() * area).item()
    if name == "checkerboard":  # the grid fits the squares: exact
        assert mass == pytest.approx(1.0, abs=1e-12)
        assert entropy == pytest.approx(math.log(8), abs=1e-12)
    else:
        assert mass == pytest.approx(1.0, abs=1e-7)
    assert entropy == pytest.approx(toys.ENTROPY[name], abs=1e-6)


def test_log_prob_dtypes_and_shapes():
    x64 = torch.randn(7, 2, dtype=torch.float64)
    for toy in toys.TOYS.values():
        out64 = toy.log_prob(x64)
        out32 = toy.log_prob(x64.float())
        assert out64.shape == (7,) and out64.dtype == torch.float64
        assert out32.shape == (7,) and out32.dtype == torch.float32
        torch.testing.assert_close(out32, toy.log_prob(x64.float().double()).float())
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got \(7, 3\)"):
        toys.TWO_MOONS.log_prob(torch.randn(7, 3))


def reference_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    """Brute force: composite Simpson over 100,001 parameter values per curve, curves and
    parameter laws written from the documentation (scipy's truncnorm for the pinwheel)."""
    pi = math.pi
    if name == "two-moons":
        t = torch.linspace(0, pi, 100_001, dtype=torch.float64)
        curves = [
            (torch.stack([t.cos(), t.sin()], 1), torch.full_like(t, 1 / pi)),
            (torch.stack([1 - t.cos(), 0.5 - t.sin()], 1), torch.full_like(t, 1 / pi)),
        ]
        weights, sigma = [0.5, 0.5], 0.1
    elif name == "pinwheel":
        t = torch.linspace(0, 4, 100_001, dtype=torch.float64)
        law = stats.truncnorm(a=-2 / 0.6, b=2 / 0.6, loc=2, scale=0.6)
        density = torch.from_numpy(law.pdf(t.numpy()))
        curves = []
        for k in range(5):
            angle = 2 * pi * k / 5 + 0.25 * torch.exp(t / 2)
            curves.append((t[:, None] * torch.stack([angle.cos(), angle.sin()], 1), density))
        weights, sigma = [0.2] * 5, 0.2
    elif name == "2spirals":
        t = torch.linspace(0, 3 * pi, 100_001, dtype=torch.float64)
        arm = torch.stack([-t * t.cos(), t * t.sin()], 1) / 3
        density = 2 * t / (3 * pi) ** 2
        curves, weights, sigma = [(arm, density), (-arm, density)], [0.5, 0.5], 0.1
    elif name == "swissroll":
        t = torch.linspace(1.5 * pi, 4.5 * pi, 100_001, dtype=torch.float64)
        arm = torch.stack([t * t.cos(), t * t.sin()], 1) / 5
        curves, weights, sigma = [(arm, torch.full_like(t, 1 / (3 * pi)))], [1.0], 0.2
    else:
        raise AssertionError(name)
    h = (t[1] - t[0]).item()
    simpson = torch.ones_like(t)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    simpson *= h / 3
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for weight, (points, density) in zip(weights, curves, strict=True):
        sq = torch.cdist(x, points) ** 2
        kernel = torch.exp(-sq / (2 * sigma**2)) / (2 * pi * sigma**2)
        total += weight * kernel @ (density * simpson)
    return total.log()


@pytest.mark.parametrize("name", ["two-moons", "pinwheel", "2spirals", "swissroll"])
def test_curve_density_matches_brute_force(name):
    toy = toys.TOYS[name]
    near = toy.sample(48, torch.Generator().manual_seed(3)).double()
    w = HALF_WIDTH[name]
    anywhere = (torch.rand(48, 2, generator=torch.Generator().manual_seed(4)) * 2 - 1) * w
    x = torch.cat([near, anywhere.double()])
    expected = reference_log_prob(name, x)
    keep = expected > -40  # where exp() keeps enough digits in the reference
    assert keep.sum() >= 48
    torch.testing.assert_close(toy.log_prob(x)[keep], expected[keep], rtol=0, atol=1e-7)


def test_rings_density_matches_angle_quadrature():
    """The Bessel closed form against the trapezoid rule over the angle (spectral for a
    periodic integrand)."""
    x = torch.cat(
        [toys.RINGS.sample(50, torch.Generator().manual_seed(1)).double(), torch.randn(30, 2)]
    )
    angle = torch.arange(8192, dtype=torch.float64) * (2 * math.pi / 8192)
    circle = torch.stack([angle.cos(), angle.sin()], 1)
    sigma = 0.08
    p = torch.zeros(len(x), dtype=torch.float64)
    for radius in (0.75, 1.5, 2.25, 3.0):
        sq = torch.cdist(x, radius * circle) ** 2
        p += 0.25 * (torch.exp(-sq / (2 * sigma**2)) / (2 * math.pi * sigma**2)).mean(1)
    keep = p.log() > -40
    torch.testing.assert_close(toys.RINGS.log_prob(x)[keep], p.log()[keep], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["8gaussians", "two-gaussians"])
def test_gaussian_mixtures_match_torch_distributions(name):
    if name == "8gaussians":
        angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
        means = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
        std = 0.5 / math.sqrt(2)
    else:
        means, std = torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=torch.float64), 1.0
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(len(means), dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(means, std), 1),
    )
    x = 3 * torch.randn(500, 2, dtype=torch.float64)
    torch.testing.assert_close(toys.TOYS[name].log_prob(x), mixture.log_prob(x))


def test_two_gaussians_entropy_direct():
    """Along (1, 1)/sqrt(2) the mixture is 1/2 N(-2 sqrt 2, 1) + 1/2 N(2 sqrt 2, 1); across
    it, N(0, 1), entropy log(2 pi e)/2. The 1-D part by Simpson's rule."""
    m = 2 * math.sqrt(2)
    u = np.linspace(-16, 16, 320_001)
    p = 0.5 * (stats.norm.pdf(u, -m) + stats.norm.pdf(u, m))
    h_1d = -float(np.sum(_simpson_weights(len(u), u[1] - u[0]) * p * np.log(p)))
    assert toys.ENTROPY["two-gaussians"] == pytest.approx(
        0.5 * math.log(2 * math.pi * math.e) + h_1d, abs=1e-8
    )


def _simpson_weights(count: int, h: float) -> np.ndarray:
    weights = np.ones(count)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return weights * h / 3


def test_checkerboard_support():
    lp = toys.CHECKERBOARD.log_prob
    inside = torch.tensor([[-1.5, -1.5], [0.5, 0.5], [-0.5, 1.5], [1.5, -0.5]])
    empty = torch.tensor([[-0.5, -1.5], [0.5, -0.5], [1.5, 0.5], [-1.5, -0.5]])
    lines = torch.tensor([[0.0, 0.3], [1.0, -1.7], [-2.0, -2.0], [2.0, 2.0], [0.5, 1.0]])
    outside = torch.tensor([[2.1, 0.5], [-2.0001, 0.5], [0.5, 3.0]])
    assert torch.all(lp(inside) == -math.log(8))
    assert torch.all(lp(lines) == -math.log(8))
    assert torch.all(lp(empty) == -math.inf)
    assert torch.all(lp(outside) == -math.inf)
    samples = toys.CHECKERBOARD.sample(200_000, torch.Generator().manual_seed(0))
    assert torch.all(lp(samples) == -math.log(8))


# ---------------------------------------------------------------------------- samplers


def chi_square(samples: torch.Tensor, log_prob, half_width: float, bin_width=0.125, sub=4):
    """Pearson's statistic of a 2-D histogram of ``samples`` against the density integrated
    over each bin (midpoint rule on sub x sub cells per bin); bins expecting fewer than 5
    counts are pooled with the outside of the box. Returns (statistic, degrees of freedom)."""
    grid, area, count = midpoint_grid(half_width, bin_width / sub)
    bins = count // sub
    cell = log_prob(grid).exp().reshape(bins, sub, bins, sub) * area
    expected = len(samples) * cell.sum((1, 3)).reshape(-1)
    index = torch.floor((samples.double() + half_width) / bin_width).long()
    inside = ((index >= 0) & (index < bins)).all(1)
    flat = index[inside, 0] * bins + index[inside, 1]
    observed = torch.bincount(flat, minlength=bins * bins).double()
    kept = expected >= 5
    rest_o = len(samples) - observed[kept].sum()
    rest_e = len(samples) - expected[kept].sum()
    stat = ((observed[kept] - expected[kept]) ** 2 / expected[kept]).sum().item()
    bins_used = int(kept.sum())
    if rest_e >= 5:
        stat += ((rest_o - rest_e) ** 2 / rest_e).item()
        bins_used += 1
    else:
        assert rest_o <= 10, f"{rest_o} samples where the density expects {rest_e:.2f}"
    return stat, bins_used - 1


@pytest.mark.parametrize("name", TOY_NAMES)
def test_samples_follow_density(name):
    toy = toys.TOYS[name]
    samples = toy.sample(100_000, torch.Generator().manual_seed(2024))
    assert samples.shape == (100_000, 2) and samples.dtype == torch.float32
    stat, dof = chi_square(samples, toy.log_prob, HALF_WIDTH[name] - 0.5)
    assert dof > 100
    assert stat < dof + 5 * math.sqrt(2 * dof), (stat, dof)


def test_chi_square_detects_a_wrong_sampler():
    """The histogram test fails for a process 10% noisier than the density."""
    wider = toys.CurveMixture("wider", "", toys.TWO_MOONS.arcs, sigma=0.11, box=toys.TWO_MOONS.box)
    samples = wider.sample(100_000, torch.Generator().manual_seed(2024))
    stat, dof = chi_square(samples, toys.TWO_MOONS.log_prob, 3.5)
    assert stat > dof + 20 * math.sqrt(2 * dof)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_stored_entropy_matches_fresh_monte_carlo(name):
    estimate, se = toys.entropy(name, n=100_000, seed=99)
    if name == "checkerboard":
        assert estimate == pytest.approx(math.log(8), abs=1e-12)
    else:
        assert 0 < se < 0.008
        assert abs(estimate - toys.ENTROPY[name]) < 4 * se


def test_stored_monte_carlo_table_is_consistent():
    for name, (estimate, se) in toys.ENTROPY_MC.items():
        assert se <= 0.003
        assert abs(estimate - toys.ENTROPY[name]) <= 4 * se + 1e-5


# ---------------------------------------------------------------------------- toy datasets


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_dataset_splits(name):
    data = datasets.load(name, n=1000, seed=5)
    again = datasets.load(name, n=1000, seed=5)
    other = datasets.load(name, n=1000, seed=6)
    assert (len(data.train), len(data.val), len(data.test)) == (800, 100, 100)
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        assert part.x.dtype == torch.float32 and part.levels is None
        assert torch.equal(part.x, getattr(again, split).x)
        assert not torch.equal(part.x, getattr(other, split).x)
    rows = torch.cat([data.train.x, data.val.x, data.test.x])
    assert len(torch.unique(rows, dim=0)) == 1000  # no sample in two splits
    assert data.entropy == toys.ENTROPY[name]
    assert data.log_prob(data.test.x).shape == (100,)
    assert torch.isfinite(data.log_prob(data.test.x)).all()


def test_load_defaults_and_errors():
    data = datasets.load("two-moons")
    assert (len(data.train), len(data.val), len(data.test)) == (16_000, 2_000, 2_000)
    assert torch.equal(data.train.x, toys.two_moons(20_000, 0).train.x)
    assert datasets.load("rings", n=100, flatten=True).train.x.shape == (80, 2)
    with pytest.raises(ValueError, match="unknown dataset 'moons'; expected one of two-moons"):
        datasets.load("moons")
    with pytest.raises(ValueError, match="n must be an integer >= 10"):
        datasets.load("rings", n=9)
    for n in range(10, 40):
        sizes = [len(part) for part in (toys.make("rings", n).train, toys.make("rings", n).val)]
        assert min(sizes) >= 1 and n - sum(sizes) >= 1
    assert datasets.base.Split(torch.zeros(0, 1, 2, 2)).flatten().x.shape == (0, 4)


# ---------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits

    data = datasets.load("digits", seed=0)
    assert (data.train.x.shape, data.val.x.shape, data.test.x.shape) == (
        (1258, 1, 8, 8),
        (270, 1, 8, 8),
        (269, 1, 8, 8),
    )
    assert data.train.levels == data.val.levels == data.test.levels == 17
    everything = torch.cat([data.train.x, data.val.x, data.test.x]).reshape(-1, 64)
    assert everything.dtype == torch.float32
    assert torch.equal(everything, everything.round()) and everything.min() == 0
    assert everything.max() == 16
    original = torch.from_numpy(load_digits().data).float()
    assert torch.equal(_sorted_rows(everything), _sorted_rows(original))
    assert torch.equal(datasets.load("digits", seed=0).test.x, data.test.x)
    assert not torch.equal(datasets.load("digits", seed=1).test.x, data.test.x)
    assert datasets.load("digits", flatten=True).train.x.shape == (1258, 64)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    rows = [tuple(row) for row in x.tolist()]
    return torch.tensor(sorted(rows))


# ---------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """An IDX file written here from the format description."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_idx_parser_raw_and_gzip(tmp_path):
    pixels = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    (tmp_path / "a-idx3-ubyte").write_bytes(idx_bytes(pixels, 0x08))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(pixels, 0x08)))
    for path in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        out = images.read_idx(tmp_path / path)
        assert out.dtype == np.uint8 and out.shape == (3, 4, 5)
        np.testing.assert_array_equal(out, pixels)
    ints = np.array([[-7, 70000], [3, -1]], dtype=np.int32)
    (tmp_path / "ints").write_bytes(idx_bytes(ints, 0x0C))
    np.testing.assert_array_equal(images.read_idx(tmp_path / "ints"), ints)


def test_idx_parser_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8), 0x08)
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(images.IDXError, match=r"magic.*not an IDX file|not an IDX file.*0x1234"):
        images.read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(images.IDXError, match=r"shape \(2, 3\) \(6 bytes of data\) but 5 bytes"):
        images.read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(images.IDXError, match="corrupt gzip"):
        images.read_idx(tmp_path / "bad.gz")


def write_fake_mnist(folder: Path, train: int = 60_000, skip: tuple[str, ...] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": train, "t10k": 10_000}
    for part, count in counts.items():
        if f"{part}-images-idx3-ubyte" not in skip:
            pixels = np.zeros((count, 28, 28), dtype=np.uint8)
            (folder / f"{part}-images-idx3-ubyte").write_bytes(idx_bytes(pixels, 0x08))
        if f"{part}-labels-idx1-ubyte" not in skip:
            labels = np.zeros(count, dtype=np.uint8)
            data = gzip.compress(idx_bytes(labels, 0x08))
            (folder / f"{part}-labels-idx1-ubyte.gz").write_bytes(data)


def test_missing_files_message(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, skip=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    with pytest.raises(FileNotFoundError) as error:
        datasets.load("mnist", data_dir=tmp_path)
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-labels" not in message and "t10k-images" not in message
    assert str(tmp_path.resolve()) in message and str(tmp_path.resolve() / "mnist") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert "yann.lecun.com" in message and "download=True" in message
    assert "\n" not in message
    monkeypatch.delenv("FLOWFORGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path.resolve() / "data" / "mnist")):
        images.mnist()


def test_mnist_wrong_counts(tmp_path):
    write_fake_mnist(tmp_path / "mnist", train=10)
    with pytest.raises(images.IDXError, match=r"shape \(60000, 28, 28\), got uint8 \(10, 28"):
        images.mnist(tmp_path)


def test_download_checks_content(tmp_path, monkeypatch):
    """download=True with urlopen served from memory: a good file lands under its name, a
    corrupt one is refused and leaves nothing behind."""
    labels = np.arange(10_000, dtype=np.uint8) % 10
    payload = {"t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels, 0x08))}
    monkeypatch.setitem(images.MNIST_MD5, "t10k-labels-idx1-ubyte", _md5_gunzip(payload))
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(payload[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(images.urllib.request, "urlopen", urlopen)
    write_fake_mnist(tmp_path, skip=("t10k-labels-idx1-ubyte",))
    data = images.mnist(tmp_path, download=True)
    assert requested == [images.MNIST_MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"]
    assert len(data.test) == 10_000
    np.testing.assert_array_equal(images.read_mnist(tmp_path)["test_labels"], labels)

    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setitem(images.MNIST_MD5, "t10k-labels-idx1-ubyte", "0" * 32)
    with pytest.raises(OSError, match=r"could not download t10k-labels-idx1-ubyte\.gz: .*MD5"):
        images.mnist(tmp_path, download=True)
    assert sorted(p.name for p in tmp_path.iterdir() if "t10k-labels" in p.name) == []


def _md5_gunzip(payload: dict[str, bytes]) -> str:
    return hashlib.md5(gzip.decompress(next(iter(payload.values())))).hexdigest()


# ---------------------------------------------------------------------------- MNIST


needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST IDX files not found at {MNIST_DIR} (../shared/data/mnist from the repo)",
)


@pytest.fixture(scope="module")
def mnist_data():
    return datasets.load("mnist", data_dir=MNIST_DIR)


@needs_mnist
def test_mnist_shapes_and_values(mnist_data):
    data = mnist_data
    assert data.train.x.shape == (50_000, 1, 28, 28)
    assert data.val.x.shape == (10_000, 1, 28, 28)
    assert data.test.x.shape == (10_000, 1, 28, 28)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.levels == 256
        assert split.x.min() == 0 and split.x.max() == 255
        assert torch.equal(split.x, split.x.round())
    assert data.flatten().train.x.shape == (50_000, 784)


@needs_mnist
def test_mnist_content_is_the_original(mnist_data):
    """Train + val in order, with an IDX header written here, hash to the md5 that the data
    README gives for the uncompressed training images; the test split re-encodes to the
    test file's uncompressed bytes."""
    train = torch.cat([mnist_data.train.x, mnist_data.val.x]).to(torch.uint8).numpy()
    assert hashlib.md5(idx_bytes(train[:, 0], 0x08)).hexdigest() == (
        "6bbc9ace898e44ae57da46a324031adb"
    )
    test = mnist_data.test.x.to(torch.uint8).numpy()[:, 0]
    original = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert idx_bytes(test, 0x08) == original


@needs_mnist
def test_mnist_subset_and_environment(mnist_data, monkeypatch):
    monkeypatch.setenv("FLOWFORGE_DATA_DIR", str(MNIST_DIR.parent))  # found in its mnist/
    small = datasets.load("mnist", n=300, seed=1)
    assert small.train.x.shape == (300, 1, 28, 28)
    assert torch.equal(small.val.x, mnist_data.val.x)
    assert torch.equal(small.test.x, mnist_data.test.x)
    full = {row.numpy().tobytes() for row in mnist_data.train.x.to(torch.uint8)}
    assert all(row.numpy().tobytes() in full for row in small.train.x.to(torch.uint8))
    assert torch.equal(datasets.load("mnist", n=300, seed=1).train.x, small.train.x)
    assert not torch.equal(datasets.load("mnist", n=300, seed=2).train.x, small.train.x)
    labels = images.read_mnist()["train_labels"]
    assert labels.shape == (60_000,) and labels.max() == 9


@pytest.mark.slow
def test_entropy_table_command(capsys):
    """``python -m flowforge.datasets.toys`` (its main) prints one row per toy."""
    toys.main(["--n", "4000"])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[1:9]}
    assert list(rows) == TOY_NAMES
    for name, row in rows.items():
        assert float(row[3]) == pytest.approx(toys.ENTROPY[name], abs=1e-8)
