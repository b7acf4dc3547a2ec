"""The optional extras (`flowforge.runtime.extras`): the table matches pyproject.toml, a
module whose extra is missing says so in one line whether or not the extra is installed here
(its modules are hidden for the test)."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

import pytest

from flowforge.runtime import extras
from flowforge.runtime.extras import MissingExtraError

# the modules that need an extra, and which
NEEDING = [("flowforge.interop.pyro", "pyro"), ("flowforge.interop.sbi", "sbi")]


def hide(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    """Make ``extra``'s modules unimportable, as on a machine without it."""
    for name in extras.EXTRAS[extra]:
        for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_the_extras_are_pyprojects():
    declared = importlib.metadata.metadata("flowforge").get_all("Provides-Extra")
    assert sorted(extras.EXTRAS) == sorted(declared)


@pytest.mark.parametrize(("module", "extra"), NEEDING)
def test_a_module_whose_extra_is_missing_says_so_in_one_line(monkeypatch, module, extra):
    hide(monkeypatch, extra)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError) as caught:
        importlib.import_module(module)
    expected = f"{module} needs the {extra} extra: pip install 'flowforge[{extra}]'"
    assert str(caught.value) == expected
    assert (caught.value.module, caught.value.extra) == (module, extra)
    assert isinstance(caught.value, ImportError)  # what code that catches ImportError expects
    assert module not in sys.modules


@pytest.mark.parametrize("extra", sorted(set(extras.EXTRAS) - {"dev"}))  # dev runs the suite
def test_installed_and_missing_follow_what_can_be_imported(monkeypatch, extra):
    hide(monkeypatch, extra)
    assert extras.missing(extra) == list(extras.EXTRAS[extra])
    assert not extras.installed(extra)


def test_the_dev_extra_that_runs_this_suite_is_installed():
    assert extras.installed("dev") and extras.missing("dev") == []


def test_an_unknown_extra_is_refused():
    with pytest.raises(ValueError, match=r"unknown extra 'pyr'; expected one of \['bench', "):
        extras.installed("pyr")
    with pytest.raises(ValueError, match="unknown extra 'pyr'"):
        MissingExtraError("flowforge.x", "pyr")
