"""Collect every ```python block of README.md and docs/ as a test, with Sybil.

The blocks of one page share a namespace and run in order, as a reader would paste them, in a
fresh temporary directory (so ``runs/...`` paths land there); ``data/mnist`` in that directory
links to the MNIST files of ``../shared/data/mnist`` when this checkout has them. A block that
needs what a test machine lacks is skipped with ``<!-- skip: next if(condition, reason="...") -->``
right above it; no block is skipped unconditionally.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"

matplotlib.use("Agg")


def _enter(namespace: dict) -> None:
    namespace["__previous_directory__"] = os.getcwd()
    directory = Path(tempfile.mkdtemp(prefix="flowforge-docs-"))
    namespace["__directory__"] = directory
    if MNIST.is_dir():
        (directory / "data").mkdir()
        (directory / "data" / "mnist").symlink_to(MNIST, target_is_directory=True)
    os.chdir(directory)


def _leave(namespace: dict) -> None:
    os.chdir(namespace["__previous_directory__"])
    shutil.rmtree(namespace["__directory__"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["*.md"],
    setup=_enter,
    teardown=_leave,
).pytest()
