"""Training by maximum likelihood: `fit()`, its results, checkpoints and divergence guard."""

from flowforge.training.divergence import DivergenceError
from flowforge.training.loop import fit
from flowforge.training.results import (
    History,
    Report,
    as_split,
    evaluate,
    nll_values,
    write_metrics,
)

__all__ = [
    "DivergenceError",
    "History",
    "Report",
    "as_split",
    "evaluate",
    "fit",
    "nll_values",
    "write_metrics",
]
