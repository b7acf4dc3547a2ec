"""Image datasets: scikit-learn's 8x8 digits and MNIST (read from local IDX files).

Images are ``(N, 1, H, W)`` float32 tensors that hold the integer pixel values, with
``levels`` set so that `dequantize()` maps them to
$[0, 1]$.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from flowforge.datasets.base import Dataset, pixel_dataset, split_three

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four MNIST files by role; each may be stored raw or gzipped (``.gz``)."""

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Where ``download=True`` fetches ``<file>.gz`` from, in order (the original is
http://yann.lecun.com/exdb/mnist/)."""

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""MD5 of each file's uncompressed content (the .gz bytes differ between archives)."""

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A file that is not a well-formed IDX file."""


def _read_content(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped if they start with the gzip magic number."""
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise IDXError(f"{path}: corrupt gzip data ({error})") from None


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse the bytes of an IDX file into an array of its shape and element type.

    The format: a magic number ``00 00 TT DD`` (``TT`` the element type, 0x08 = unsigned
    byte ... 0x0E = float64; ``DD`` the number of dimensions), then ``DD`` big-endian int32
    sizes, then the elements in C order, big-endian.
    """
    if len(data) < 4:
        raise IDXError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise IDXError(
            f"{source}: not an IDX file (magic number 0x{magic:08x}; expected 0x0000TTDD "
            "with TT in 08, 09, 0b, 0c, 0d, 0e)"
        )
    ndim, dtype = data[3], _IDX_TYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{source}: header of {ndim} dimensions is cut off")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXError(
            f"{source}: the header gives shape {shape} ({expected} bytes of data) but "
            f"{len(data) - header} bytes follow it"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzipped (recognised by its content, not its name)."""
    path = Path(path)
    return parse_idx(_read_content(path), str(path))


# ---------------------------------------------------------------------------- MNIST


def _mnist_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders to look in, first the one ``download=True`` writes to."""
    root = data_dir if data_dir is not None else os.environ.get("FLOWFORGE_DATA_DIR")
    if root:
        return [Path(root), Path(root) / "mnist"]
    return [Path("data") / "mnist"]


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the four MNIST files by role (see `MNIST_FILES`).

    Looks in ``data_dir`` and its ``mnist/`` subfolder; without ``data_dir``, in
    ``$FLOWFORGE_DATA_DIR`` and its ``mnist/`` subfolder; without that, in ``./data/mnist``.
    All four must be in one folder. Raises FileNotFoundError naming the missing files.
    """
    folders = _mnist_dirs(data_dir)
    best: dict[str, Path] = {}
    for folder in folders:
        found = {role: _find(folder, name) for role, name in MNIST_FILES.items()}
        present = {role: path for role, path in found.items() if path is not None}
        if len(present) == len(MNIST_FILES):
            return present
        if len(present) > len(best) or not best:
            best = present
    missing = [f"{name}[.gz]" for role, name in MNIST_FILES.items() if role not in best]
    places = " and ".join(str(folder.resolve()) for folder in folders)
    raise FileNotFoundError(
        f"MNIST files missing: {', '.join(missing)} (looked in {places}). Get the four .gz "
        f"files from {MNIST_MIRRORS[0]} or http://yann.lecun.com/exdb/mnist/ into "
        f"{folders[0].resolve()} (or set data_dir / FLOWFORGE_DATA_DIR to their folder), "
        "or pass download=True."
    )


def download_mnist(folder: str | os.PathLike) -> None:
    """Fetch the MNIST ``.gz`` files that ``folder`` lacks from `MNIST_MIRRORS`.

    Each file goes to a temporary file in ``folder``, is checked against `MNIST_MD5`
    after decompression, and only then is renamed into place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES.values():
        if _find(folder, name) is not None:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            url = f"{mirror}{name}.gz"
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
                    out.write(r.read())
                content = _read_content(Path(temporary))
                digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
                if digest != MNIST_MD5[name]:
                    raise IDXError(f"MD5 of the content is {digest}, expected {MNIST_MD5[name]}")
                os.replace(temporary, folder / f"{name}.gz")
                break
            except (OSError, IDXError) as error:
                errors.append(f"{url}: {error}")
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
        else:
            raise OSError(f"could not download {name}.gz: " + "; ".join(errors))


def read_mnist(
    data_dir: str | os.PathLike | None = None, download: bool = False
) -> dict[str, np.ndarray]:
    """The four MNIST arrays by role: images ``(N, 28, 28)`` uint8, labels ``(N,)`` uint8,
    60,000 training and 10,000 test (see `find_mnist()` for where it looks)."""
    if download:
        try:
            find_mnist(data_dir)
        except FileNotFoundError:
            download_mnist(_mnist_dirs(data_dir)[0])
    arrays = {role: read_idx(path) for role, path in find_mnist(data_dir).items()}
    for part, count in (("train", 60_000), ("test", 10_000)):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        name = MNIST_FILES[f"{part}_images"]
        if images.dtype != np.uint8 or images.shape != (count, 28, 28):
            raise IDXError(
                f"{name}: expected unsigned bytes of shape ({count}, 28, 28), got "
                f"{images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise IDXError(
                f"{MNIST_FILES[f'{part}_labels']}: expected {images.shape[0]} unsigned byte "
                f"labels to match the images, got {labels.dtype} {labels.shape}"
            )
    return arrays


def mnist(
    data_dir: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """MNIST as ``(N, 1, 28, 28)`` float32 integers 0..255, ``levels=256``.

    Splits (the usual convention): train = the first 50,000 images of the training file,
    val = its last 10,000, test = the 10,000 test images. ``n`` keeps only ``n`` training
    images, a random subset chosen with ``seed`` (in file order); without ``n`` the seed is
    unused. Files are looked for as in `find_mnist()`; ``download=True`` fetches missing
    ones first (see `download_mnist()`).
    """
    arrays = read_mnist(data_dir, download)
    images = torch.from_numpy(arrays["train_images"]).unsqueeze(1)
    test = torch.from_numpy(arrays["test_images"]).unsqueeze(1)
    return pixel_dataset("mnist", images[:50_000], images[50_000:], test, n, seed)


# ---------------------------------------------------------------------------- digits


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped with scikit-learn, no download)
    as ``(N, 1, 8, 8)`` float32 integers 0..16, ``levels=17``.

    Shuffled with ``seed`` and split 70/15/15 by
    `split_three()`: 1,258 / 270 / 269 images.
    """
    from sklearn.datasets import load_digits

    pixels = load_digits().data.reshape(-1, 1, 8, 8)
    x = torch.from_numpy(pixels.astype(np.float32))
    return Dataset("digits", *split_three(x, (0.7, 0.15), seed=seed, levels=17))
