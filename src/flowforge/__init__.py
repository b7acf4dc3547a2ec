"""flowforge: normalizing flows on PyTorch, every log-determinant verified.

>>> import torch, flowforge as ff
>>> flow = ff.models.realnvp(dim=2, layers=8, hidden=(64, 64))
>>> flow.log_prob(torch.randn(512, 2)).shape
torch.Size([512])
"""

from importlib.metadata import PackageNotFoundError, version

from . import (
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
from .diagnostics import Diagnostics, diagnose
from .distributions import ConditionalDiagNormal, DiagNormal, StandardLogistic, StandardNormal
from .flow import Flow
from .inpainting import inpaint
from .io import load, save
from .training import History, Report, evaluate, fit
from .variational import VariationalHistory, fit_variational

try:
    __version__ = version("flowforge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ConditionalDiagNormal",
    "DiagNormal",
    "Diagnostics",
    "Flow",
    "History",
    "Report",
    "StandardLogistic",
    "StandardNormal",
    "VariationalHistory",
    "__version__",
    "baselines",
    "calibration",
    "datasets",
    "diagnose",
    "distributions",
    "evaluate",
    "fit",
    "fit_variational",
    "inpaint",
    "inpainting",
    "load",
    "made",
    "models",
    "nn",
    "save",
    "simulators",
    "targets",
    "transforms",
]
