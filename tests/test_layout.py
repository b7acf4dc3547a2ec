"""The package's layout: the public short names resolve, and the API reference covers it.

``ff.models``, ``ff.fit`` and the other names of ``flowforge.__all__`` are the public API; the
subpackages (flows, transforms, nn, training, datasets, inference, applications, plots, runs,
runtime) are the docs' sections, and every module in them has a ``:::`` entry in
``docs/reference/``, so no public module is left out of the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import flowforge

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


@pytest.mark.parametrize("name", flowforge.__all__)
def test_every_public_name_resolves(name: str):
    assert getattr(flowforge, name) is not None
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
    documented = set()
    for page in REFERENCE.glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    packages = {name for name in _modules() if not name.count(".") or _is_package(name)}
    missing = [name for name in _modules() if name not in documented and name not in packages]
    assert not missing, f"modules without a ::: entry in docs/reference: {missing}"
    unknown = [name for name in documented if importlib.util.find_spec(name) is None]
    assert not unknown, f"docs/reference names modules that do not exist: {unknown}"


def _is_package(name: str) -> bool:
    return hasattr(importlib.import_module(name), "__path__")
