"""The package's layout: the public short names resolve, and the API reference covers it.

``ff.models``, ``ff.fit`` and the other names of ``flowforge.__all__`` are the public API; the
subpackages (flows, transforms, nn, training, datasets, inference, applications, plots, runs,
runtime) are the docs' sections, and every module in them has a ``:::`` entry in
``docs/reference/``, so no public module is left out of the reference. Every module imports,
or, where it needs an optional extra that is not installed, says so in one line
(`flowforge.runtime.extras.MissingExtraError`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowforge
from flowforge.runtime import extras

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


@pytest.mark.parametrize("name", flowforge.__all__)
def test_every_public_name_is_the_object_of_its_module(name: str):
    value = getattr(flowforge, name)
    if name == "__version__":
        assert value == importlib.metadata.version("flowforge")
    elif name in flowforge._SUBMODULES:
        assert value is importlib.import_module(f"flowforge.{flowforge._SUBMODULES[name]}")
    else:
        home = importlib.import_module(f"flowforge.{flowforge._NAMES[name]}")
        assert value is getattr(home, name)
        assert value.__module__.startswith("flowforge."), f"{name} is {value.__module__}'s"
    assert name in dir(flowforge)


def test_short_module_names_are_the_subpackages_modules():
    assert flowforge.models is importlib.import_module("flowforge.flows.models")
    assert flowforge.targets is importlib.import_module("flowforge.inference.targets")
    assert flowforge.fit is importlib.import_module("flowforge.training.loop").fit
    from flowforge import inpainting, io  # a from-import of a short name works as well

    assert inpainting.inpaint is flowforge.inpaint and io.save is flowforge.save


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        flowforge.nosuch  # noqa: B018


def _modules() -> list[str]:
    found = []
    for info in pkgutil.walk_packages(flowforge.__path__, "flowforge."):
        leaf = info.name.rsplit(".", 1)[-1]
        if not leaf.startswith("_") and info.name not in ("flowforge.cli", "flowforge.console"):
            found.append(info.name)
    return found


def test_the_api_reference_documents_every_module():
    """Read from the files alone: a module whose extra is missing is documented all the same."""
    documented = set()
    for page in REFERENCE.glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    packages = {name for name in _modules() if _is_package(name)}
    missing = [name for name in _modules() if name not in documented and name not in packages]
    assert not missing, f"modules without a ::: entry in docs/reference: {missing}"
    unknown = [name for name in documented if importlib.util.find_spec(name) is None]
    assert not unknown, f"docs/reference names modules that do not exist: {unknown}"


def _is_package(name: str) -> bool:
    """Whether ``name`` is a package, found without importing it."""
    return importlib.util.find_spec(name).submodule_search_locations is not None


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports_or_names_its_missing_extra(name: str):
    try:
        importlib.import_module(name)
    except extras.MissingExtraError as error:  # counted as "needs an extra", checked as such
        assert not extras.installed(error.extra), f"{name}: {error.extra} is installed"
        assert error.module == name
        install = extras.install_command(error.extra)
        assert str(error) == f"{name} needs the {error.extra} extra: {install}"


UPPER = ("training", "datasets", "interop", "inference", "runs", "plots", "applications", "cli")


@pytest.mark.parametrize("core", ["flows", "transforms", "nn"])
def test_the_core_imports_nothing_above_it(core: str):
    """``python -X importtime -c "import flowforge.<core>.<every module>"``: the modules
    they load (every import, from the interpreter's own trace) include none of the upper
    subpackages."""
    package = importlib.import_module(f"flowforge.{core}")
    modules = [f"flowforge.{core}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    command = [sys.executable, "-X", "importtime", "-c", "import " + ", ".join(modules)]
    trace = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if "|" in line}
    ours = {name for name in loaded if name.startswith("flowforge.")}
    assert f"flowforge.{core}" in ours
    above = sorted(name for name in ours if name.split(".")[1] in UPPER)
    assert not above, f"import flowforge.{core} loads {above}"
