"""flowforge: normalizing flows on PyTorch, every log-determinant verified.

>>> import torch, flowforge as ff
>>> flow = ff.models.realnvp(dim=2, layers=8, hidden=(64, 64))
>>> flow.log_prob(torch.randn(512, 2)).shape
torch.Size([512])

The subpackages and names below are imported on first use (PEP 562), so that
``import flowforge`` is quick and the command line can take charge of signals before torch
loads; ``ff.models``, ``from flowforge import fit`` and the rest work as usual.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("flowforge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = (
    "baselines",
    "calibration",
    "datasets",
    "distributions",
    "inpainting",
    "made",
    "models",
    "nn",
    "simulators",
    "targets",
    "transforms",
)
_NAMES = {
    "ConditionalDiagNormal": "distributions",
    "DiagNormal": "distributions",
    "Diagnostics": "diagnostics",
    "DivergenceError": "training",
    "Flow": "flow",
    "History": "training",
    "Report": "training",
    "StandardLogistic": "distributions",
    "StandardNormal": "distributions",
    "VariationalHistory": "variational",
    "diagnose": "diagnostics",
    "evaluate": "training",
    "fit": "training",
    "fit_variational": "variational",
    "inpaint": "inpainting",
    "load": "io",
    "save": "io",
}

__all__ = sorted(["__version__", *_SUBMODULES, *_NAMES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'flowforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports
    from . import (  # noqa: F401
        baselines,
        calibration,
        datasets,
        distributions,
        inpainting,
        made,
        models,
        nn,
        simulators,
        targets,
        transforms,
    )
    from .diagnostics import Diagnostics, diagnose  # noqa: F401
    from .distributions import (  # noqa: F401
        ConditionalDiagNormal,
        DiagNormal,
        StandardLogistic,
        StandardNormal,
    )
    from .flow import Flow  # noqa: F401
    from .inpainting import inpaint  # noqa: F401
    from .io import load, save  # noqa: F401
    from .training import DivergenceError, History, Report, evaluate, fit  # noqa: F401
    from .variational import VariationalHistory, fit_variational  # noqa: F401
