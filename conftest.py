"""Collect every ```python block of README.md and docs/ as a test, with Sybil, and skip
whatever needs an optional extra that is not installed.

The blocks of one page share a namespace and run in order, as a reader would paste them, in a
fresh temporary directory (so ``runs/...`` paths land there); ``data/mnist`` in that directory
links to the MNIST files of ``../shared/data/mnist`` when this checkout has them. A block that
needs what a test machine lacks is skipped with ``<!-- skip: next if(condition, reason="...") -->``
right above it; no block is skipped unconditionally.

Optional extras (`flowforge.runtime.extras`): a test marked ``@pytest.mark.extra("pyro")``,
or a block with ``<!-- extra: pyro -->`` right above it, is skipped with the one-line reason
``needs the pyro extra: pip install 'flowforge[pyro]'`` where the extra is missing, and is
selected by ``-m extra``. The run ends with a line counting those that ran and those that
skipped. With ``FLOWFORGE_REQUIRE_EXTRAS=1`` (CI's third stage, after installing every extra)
such a skip fails instead, so that no test that needs an extra goes unrun.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib
import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from flowforge.runtime import extras

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


# --- optional extras ------------------------------------------------------------------------

EXTRA_COMMENT = re.compile(r"<!--\s*extra:\s*([\w, ]+?)\s*-->$")
REQUIRE_EXTRAS = os.environ.get("FLOWFORGE_REQUIRE_EXTRAS") == "1"
NEEDS: dict[str, tuple[str, ...]] = {}  # node id -> the extras that item needs
OUTCOMES: Counter = Counter()  # "ran" / "skipped" for the items in NEEDS


def skip_reason(extra: str) -> str:
    """The one-line reason of a test skipped for want of ``extra``."""
    return f"needs the {extra} extra: {extras.install_command(extra)}"


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        example = getattr(item, "example", None)  # a Sybil block: the comment above it
        if example is not None:
            match = EXTRA_COMMENT.search(example.document.text[: example.start].rstrip())
            if match:
                item.add_marker(pytest.mark.extra(*re.split(r"[,\s]+", match.group(1))))
        names = tuple(name for mark in item.iter_markers("extra") for name in mark.args)
        unknown = sorted(set(names) - set(extras.EXTRAS))
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown extra {unknown}")
        if names:
            NEEDS[item.nodeid] = names


def pytest_runtest_setup(item: pytest.Item) -> None:
    for extra in NEEDS.get(item.nodeid, ()):
        if not extras.installed(extra):
            pytest.skip(skip_reason(extra))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if REQUIRE_EXTRAS and report.skipped and "pip install 'flowforge[" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"FLOWFORGE_REQUIRE_EXTRAS=1, yet skipped: {report.longrepr}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in NEEDS:
        return
    for_want_of_an_extra = "pip install 'flowforge[" in str(report.longrepr)
    if report.when == "setup" and report.skipped and for_want_of_an_extra:
        OUTCOMES["skipped"] += 1
    elif report.when == "call":
        OUTCOMES["ran"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if OUTCOMES:
        terminalreporter.write_line(
            f"tests that need an extra: {OUTCOMES['ran']} ran, "
            f"{OUTCOMES['skipped']} skipped for want of it"
        )
