"""Training: `fit()` by maximum likelihood or flow matching, its results, checkpoints,
divergence guard, callbacks, optimisers and sources of batches."""

from flowforge.training.callbacks import (
    Callback,
    Checkpointing,
    EachEpoch,
    EarlyStopping,
    MetricsFile,
    TensorBoard,
)
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
    "Callback",
    "Checkpointing",
    "DivergenceError",
    "EachEpoch",
    "EarlyStopping",
    "FlowMatching",
    "History",
    "Likelihood",
    "MetricsFile",
    "Objective",
    "Report",
    "TensorBoard",
    "as_split",
    "evaluate",
    "fit",
    "nll_values",
    "write_metrics",
]
