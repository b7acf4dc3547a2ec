"""flowforge: normalizing flows on PyTorch, every log-determinant verified.

Examples:
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
from typing import TYPE_CHECKING, Any

from flowforge.runtime.version import __version__ as __version__

# the public subpackages and modules, by the short name they have on ``flowforge``
_SUBMODULES = {
    "applications": "applications",
    "atomic": "runtime.atomic",
    "baselines": "training.baselines",
    "calibration": "inference.calibration",
    "checkpoint": "training.checkpoint",
    "config": "runs.config",
    "datasets": "datasets",
    "devices": "runtime.devices",
    "diagnostics": "inference.diagnostics",
    "distributions": "flows.distributions",
    "divergence": "training.divergence",
    "flows": "flows",
    "inference": "inference",
    "inpainting": "applications.inpainting",
    "interrupts": "runtime.interrupts",
    "io": "flows.io",
    "limits": "runtime.limits",
    "made": "nn.made",
    "models": "flows.models",
    "nn": "nn",
    "plots": "plots",
    "runs": "runs",
    "runtime": "runtime",
    "simulators": "inference.simulators",
    "targets": "inference.targets",
    "training": "training",
    "transforms": "transforms",
    "variational": "inference.variational",
}
_NAMES = {
    "ConditionalDiagNormal": "flows.distributions",
    "DiagNormal": "flows.distributions",
    "Diagnostics": "inference.diagnostics",
    "DivergenceError": "training",
    "Flow": "flows.flow",
    "History": "training",
    "Report": "training",
    "StandardLogistic": "flows.distributions",
    "StandardNormal": "flows.distributions",
    "VariationalHistory": "inference.variational",
    "diagnose": "inference.diagnostics",
    "evaluate": "training",
    "fit": "training",
    "fit_variational": "inference.variational",
    "inpaint": "applications.inpainting",
    "load": "flows.io",
    "save": "flows.io",
}

__all__ = sorted(["__version__", *_SUBMODULES, *_NAMES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    elif name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'flowforge' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports
    from flowforge import (  # noqa: F401  # noqa: F401
        applications,
        datasets,
        flows,
        inference,
        nn,
        plots,
        runs,
        runtime,
        training,
        transforms,
    )
    from flowforge.applications import inpainting  # noqa: F401
    from flowforge.applications.inpainting import inpaint  # noqa: F401
    from flowforge.flows import distributions, io, models  # noqa: F401
    from flowforge.flows.distributions import (  # noqa: F401
        ConditionalDiagNormal,
        DiagNormal,
        StandardLogistic,
        StandardNormal,
    )
    from flowforge.flows.flow import Flow  # noqa: F401
    from flowforge.flows.io import load, save  # noqa: F401
    from flowforge.inference import calibration, diagnostics, simulators, targets, variational  # noqa: F401  # noqa: F401
    from flowforge.inference.diagnostics import Diagnostics, diagnose  # noqa: F401
    from flowforge.inference.variational import VariationalHistory, fit_variational  # noqa: F401
    from flowforge.nn import made  # noqa: F401
    from flowforge.runs import config  # noqa: F401
    from flowforge.runtime import atomic, devices, interrupts, limits  # noqa: F401
    from flowforge.training import (  # noqa: F401
        DivergenceError,
        History,
        Report,
        baselines,
        checkpoint,
        divergence,
        evaluate,
        fit,
    )
