"""CIFAR-10 read from a local folder, in either of its two published formats.

Both formats hold the 50,000 training images in five batch files and the 10,000 test images
in one; every image is 3x32x32 unsigned bytes stored channel by channel (1,024 red, then
1,024 green, then 1,024 blue values, each plane 32x32 row-major), so ``(N, 3, 32, 32)`` is a
plain reshape of the stored rows.

* The binary version (``cifar-10-batches-bin``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
  and ``test_batch.bin``, each a run of 3,073-byte records, a label byte (0..9) followed by
  the 3,072 pixel bytes.
* The python version (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``, each a pickled dict whose ``b"data"`` is a uint8 array ``(N, 3072)`` and
  ``b"labels"`` a list of ints. Pickles can run code, so these are read by
  `SafeUnpickler`, which refuses every global except the few numpy needs to rebuild an
  array: a file that names anything else is rejected before anything in it is called.

Both are at https://www.cs.toronto.edu/~kriz/cifar.html. `cifar10()` returns the images as
``(N, 3, 32, 32)`` float32 tensors of integers 0..255 with ``levels=256``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowforge.datasets.base import Dataset, pixel_dataset

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

RECORD_BYTES = 1 + 3 * 32 * 32
"""One record of the binary version: a label byte and 3,072 pixel bytes."""

BINARY_FILES: tuple[str, ...] = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
"""The binary version's files: five training batches, then the test batch."""

PYTHON_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
"""The python version's files: five training batches, then the test batch."""

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
"""The binary version's archive, fetched by ``download=True``."""

CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
"""MD5 of `CIFAR10_URL`'s archive."""

_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
_ARCHIVE_FOLDER = "cifar-10-batches-bin"


class CIFARError(ValueError):
    """A file that is not a well-formed CIFAR-10 batch."""


class CIFARPickleError(CIFARError, pickle.UnpicklingError):
    """A python-version batch that refers to something other than plain data and arrays."""


# ---------------------------------------------------------------------------- binary version


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels ``(N,)`` (both uint8) of one binary batch file."""
    data = path.read_bytes()
    if not data or len(data) % RECORD_BYTES:
        raise CIFARError(
            f"{path}: {len(data)} bytes is not a positive multiple of {RECORD_BYTES} (one "
            "record: 1 label byte + 3072 pixel bytes); the file is truncated or not a "
            "CIFAR-10 binary batch"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    _check_labels(labels, path)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise CIFARError(
            f"{path}: record {bad[0]} has label {labels[bad[0]]}, expected 0..9 "
            f"({bad.size} bad labels in all)"
        )


def read_cifar10_binary(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the binary version from ``folder`` (the files of `BINARY_FILES`).

    Each file is a run of 3,073-byte records (label byte, then 1,024 red, 1,024 green and
    1,024 blue bytes, each plane 32x32 row-major); the record count comes from the file size.

    Returns:
        ``train_images`` ``(N, 3, 32, 32)`` and ``train_labels`` ``(N,)`` from the five
        training batches in order (N = 50,000 for the real data), ``test_images`` and
        ``test_labels`` from the test batch (10,000); all uint8.

    Raises:
        CIFARError: a file whose size is not a multiple of 3,073 or with a label above 9.
    """
    folder = Path(folder)
    parts = [_read_binary_batch(folder / name) for name in BINARY_FILES]
    return _assemble(parts)


def _assemble(parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    train, test = parts[:-1], parts[-1]
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test[0],
        "test_labels": test[1],
    }


# ---------------------------------------------------------------------------- python version


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """The one use of ``_codecs.encode`` that a pickle of plain data makes: protocol 0-2
    pickles written by Python 3 store ``bytes`` as ``_codecs.encode(str, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to turn str into latin1")
    return text.encode("latin1")


# Every global SafeUnpickler resolves, mapped to the object it gives: the names numpy 1.x
# and 2.x pickle arrays with (protocols 0-5). Nothing is imported by the name in a file.
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x names of the same functions
    _ALLOWED[f"{_core}.multiarray", "_reconstruct"] = _multiarray._reconstruct  # protocols 0-4
    _ALLOWED[f"{_core}.multiarray", "scalar"] = _multiarray.scalar  # numpy scalars
    _ALLOWED[f"{_core}.numeric", "_frombuffer"] = _numeric._frombuffer  # protocol 5
del _core


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for plain data: dicts, lists, tuples, str, bytes, numbers and numpy
    arrays. Any other global a pickle names (``os.system``, ``builtins.eval``, a class) is
    refused with `CIFARPickleError` when it is looked up, before it could be called.
    """

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise CIFARPickleError(
                f"{self.source}: the file holds a reference to {module}.{name}, which is "
                "refused because only plain data and numpy arrays are allowed"
            )
        return found


def _field(batch: dict, key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise CIFARError(f"missing key {key!r}")


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels ``(N,)`` (both uint8) of one python batch file."""
    try:
        with path.open("rb") as file:
            batch = SafeUnpickler(file, str(path)).load()
        if not isinstance(batch, dict):
            raise CIFARError(f"holds a {type(batch).__name__}, not a dict")
        data, labels = _field(batch, "data"), _field(batch, "labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise CIFARError(f"'data' is not a 2-D uint8 array ({type(data).__name__})")
        if data.shape[1] != RECORD_BYTES - 1 or not len(data):
            raise CIFARError(f"'data' has shape {data.shape}, expected (N, 3072) with N >= 1")
        labels = np.asarray(labels)
        if labels.shape != data.shape[:1] or labels.dtype.kind not in "iu":
            raise CIFARError(
                f"'labels' should be {len(data)} integers, got {labels.dtype} {labels.shape}"
            )
    except CIFARPickleError:
        raise
    except CIFARError as error:
        raise CIFARError(f"{path}: not a CIFAR-10 python batch: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as error:  # fmt: skip
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CIFARError(f"{path}: not a readable CIFAR-10 python batch ({message})") from None
    _check_labels(labels, path)
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.uint8)


def read_cifar10_python(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the python version from ``folder`` (the files of `PYTHON_FILES`).

    Each file is a pickled dict with ``b"data"``, a uint8 array ``(N, 3072)`` (rows laid out
    as in the binary version), and ``b"labels"``, N ints 0..9 (str keys are accepted too).
    The pickles are read with `SafeUnpickler` (``encoding="bytes"``), never with
    `pickle.load`.

    Returns:
        The same four uint8 arrays as `read_cifar10_binary()`.

    Raises:
        CIFARPickleError: a file that refers to anything but plain data and numpy arrays.
        CIFARError: a file that is not such a dict, or has a label outside 0..9.
    """
    folder = Path(folder)
    return _assemble([_read_python_batch(folder / name) for name in PYTHON_FILES])


# ---------------------------------------------------------------------------- finding


def _root(data_dir: str | os.PathLike | None) -> Path:
    root = data_dir if data_dir is not None else os.environ.get("FLOWFORGE_DATA_DIR")
    return Path(root) if root else Path("data")


def _candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    root = _root(data_dir)
    folders = []
    for base in (root, root / "cifar10"):
        folders += [base, base / "cifar-10-batches-bin", base / "cifar-10-batches-py"]
    return folders


def find_cifar10(data_dir: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Where CIFAR-10 is: ``("binary", folder)`` or ``("python", folder)``.

    Looks in ``data_dir``, its ``cifar-10-batches-bin`` and ``cifar-10-batches-py``
    subfolders, and the same three under ``data_dir/cifar10``; without ``data_dir`` under
    ``$FLOWFORGE_DATA_DIR``, and without that under ``./data``. The first folder holding all
    six files of a version wins (the binary version first).

    Raises:
        FileNotFoundError: in no folder, naming the folders and the files expected.
    """
    folders = _candidates(data_dir)
    for folder in folders:
        for kind, names in (("binary", BINARY_FILES), ("python", PYTHON_FILES)):
            if all((folder / name).is_file() for name in names):
                return kind, folder
    places = ", ".join(str(folder.resolve()) for folder in folders)
    raise FileNotFoundError(
        "CIFAR-10 not found: expected data_batch_1.bin .. data_batch_5.bin and test_batch.bin "
        "(binary version) or data_batch_1 .. data_batch_5 and test_batch (python version) in "
        f"one of {places}. Get cifar-10-binary.tar.gz or cifar-10-python.tar.gz from {_HOME} "
        f"and extract it into {_root(data_dir).resolve()} (or set data_dir / "
        "FLOWFORGE_DATA_DIR), or pass download=True."
    )


def download_cifar10(data_dir: str | os.PathLike | None = None) -> Path:
    """Fetch `CIFAR10_URL`, check its MD5 and extract the six batch files into
    ``<root>/cifar-10-batches-bin`` (root as in `find_cifar10()`); returns that folder.

    Only regular-file members named ``cifar-10-batches-bin/<one of BINARY_FILES>`` are
    written, under their fixed names, so no member can land outside the folder.
    """
    folder = _root(data_dir) / _ARCHIVE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".cifar-10.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(CIFAR10_URL, timeout=60) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != CIFAR10_MD5:
            raise OSError(f"{CIFAR10_URL}: MD5 is {digest.hexdigest()}, expected {CIFAR10_MD5}")
        wanted = {f"{_ARCHIVE_FOLDER}/{name}": name for name in BINARY_FILES}
        with tarfile.open(temporary, "r:gz") as archive:
            for member in archive.getmembers():
                name = wanted.get(member.name)
                source = archive.extractfile(member) if name and member.isfile() else None
                if source is None:
                    continue
                with source, (folder / name).open("wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                del wanted[member.name]
        if wanted:
            raise OSError(f"{CIFAR10_URL}: archive lacks {', '.join(sorted(wanted))}")
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return folder


def read_cifar10(
    data_dir: str | os.PathLike | None = None, download: bool = False
) -> dict[str, np.ndarray]:
    """The four CIFAR-10 arrays by role (see `read_cifar10_binary()`), from whichever
    version `find_cifar10()` finds; ``download=True`` fetches the binary version first
    when neither is found (see `download_cifar10()`)."""
    try:
        kind, folder = find_cifar10(data_dir)
    except FileNotFoundError:
        if not download:
            raise
        kind, folder = "binary", download_cifar10(data_dir)
    read = read_cifar10_binary if kind == "binary" else read_cifar10_python
    return read(folder)


def cifar10(
    data_dir: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """CIFAR-10 as ``(N, 3, 32, 32)`` float32 integers 0..255, ``levels=256``.

    Splits: val = the last tenth (rounded down) of the training images, train = the rest,
    test = the test batch; for the real data 45,000 / 5,000 / 10,000. ``n`` keeps only ``n``
    training images, a random subset chosen with ``seed`` (in file order); without ``n`` the
    seed is unused. Labels are not kept. Files are looked for as in `find_cifar10()`.
    """
    arrays = read_cifar10(data_dir, download)
    images = torch.from_numpy(arrays["train_images"])
    n_train = len(images) - len(images) // 10
    test = torch.from_numpy(arrays["test_images"])
    return pixel_dataset("cifar10", images[:n_train], images[n_train:], test, n, seed)
