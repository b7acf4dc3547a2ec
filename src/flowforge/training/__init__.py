"""Training: `fit()` by maximum likelihood or flow matching, its results, checkpoints and
divergence guard."""

from flowforge.training.divergence import DivergenceError
from flowforge.training.loop import fit
from flowforge.training.objectives import FlowMatching, Likelihood, Objective
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
    "FlowMatching",
    "History",
    "Likelihood",
    "Objective",
    "Report",
    "as_split",
    "evaluate",
    "fit",
    "nll_values",
    "write_metrics",
]
