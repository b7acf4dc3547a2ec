"""Datasets by name: 2-D toys with known densities and entropies, and image sets; and
tabular data from local ``.npz`` / ``.npy`` / ``.csv`` files, optionally with a context for
conditional density estimation (see `flowforge.datasets.files`).

Examples:
    >>> from flowforge import datasets
    >>> data = datasets.load("two-moons", n=1000, seed=0)
    >>> len(data.train), len(data.val), len(data.test), data.event_shape
    (800, 100, 100, torch.Size([2]))
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from flowforge.datasets import images
from flowforge.datasets.base import Dataset, Split, split_three
from flowforge.datasets.cifar import cifar10
from flowforge.datasets.files import is_data_file, load_file
from flowforge.datasets.images import digits, mnist
from flowforge.runtime.limits import check_elements

# Peak memory of drawing a toy data set, in float32-sized numbers per sample (measured 20 to
# 26 with toys.make: float64 draws, noise and curve points, then the float32 splits).
_TOY_NUMBERS_PER_SAMPLE = 24

_IMAGES: dict[str, str] = {
    "digits": "scikit-learn's 1,797 8x8 digits, pixel values 0..16 (levels 17), split 70/15/15",
    "mnist": "MNIST 28x28, pixel values 0..255, 50k/10k/10k, from local IDX files",
    "cifar10": "CIFAR-10 3x32x32, pixel values 0..255, 45k/5k/10k, from local batch files",
}


def _toys() -> ModuleType:
    return importlib.import_module(f"{__name__}.toys")


def __getattr__(name: str) -> Any:
    """``toys``, ``TOYS``, ``ENTROPY`` and ``DATASETS`` (every dataset name with a one-line
    description) load on first use, so that ``python -m flowforge.datasets.toys`` does not
    find its module already imported by this package."""
    if name not in ("toys", "TOYS", "ENTROPY", "DATASETS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    toys = _toys()
    globals()["TOYS"], globals()["ENTROPY"] = toys.TOYS, toys.ENTROPY
    globals()["DATASETS"] = {
        **{key: toy.description for key, toy in toys.TOYS.items()},
        **_IMAGES,
    }
    return globals()[name]


def load(
    name: str,
    n: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    flatten: bool = False,
    context_columns: str | int | list[int | str] | None = None,
) -> Dataset:
    """The dataset ``name`` (see `DATASETS`) or in the data file ``name``, its splits
    fixed by ``seed``.

    A name in `DATASETS` is always that dataset; anything else that ends in ``.npz``,
    ``.npy`` or ``.csv``, or is an existing file, is read by `files.load_file()` (``n``
    keeps a random subset of ``n`` rows; ``context_columns`` splits columns off as the
    context; ``data_dir`` is unused).

    Toys draw ``n`` samples (20,000 if None) split 80/10/10 (`toys.make()`); ``digits``
    ignores ``n`` and ``data_dir``; ``mnist`` reads from ``data_dir`` (see
    `images.find_mnist()`) and ``cifar10`` from ``data_dir`` in its binary or python
    version (see `cifar.find_cifar10()`); both keep ``n`` training images if given.
    ``flatten=True`` returns samples as vectors ``(N, D)``.
    """
    toys = _toys()
    named = name in toys.TOYS or name in _IMAGES
    if context_columns is not None and named:
        raise ValueError(f"context_columns applies to data files only, not to dataset {name!r}")
    if not named and is_data_file(name):
        data = load_file(name, n=n, seed=seed, context_columns=context_columns)
    elif name in toys.TOYS:
        n = 20_000 if n is None else n
        if isinstance(n, int):  # toys.make checks the rest
            check_elements(
                n * _TOY_NUMBERS_PER_SAMPLE,
                f"toy data {name!r} of n={n:,} samples (drawing them takes about "
                f"{_TOY_NUMBERS_PER_SAMPLE} float32-sized numbers per sample)",
            )
        data = toys.make(name, n, seed)
    elif name == "digits":
        data = digits(seed)
    elif name == "mnist":
        data = mnist(data_dir, n=n, seed=seed)
    elif name == "cifar10":
        data = cifar10(data_dir, n=n, seed=seed)
    else:
        names = [*toys.TOYS, *_IMAGES]
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {', '.join(names)}, "
            "or a .npz, .npy or .csv file"
        )
    return data.flatten() if flatten else data


__all__ = [
    "DATASETS",
    "ENTROPY",
    "TOYS",
    "Dataset",
    "Split",
    "cifar10",
    "digits",
    "files",
    "images",
    "is_data_file",
    "load",
    "load_file",
    "mnist",
    "split_three",
    "toys",
]
