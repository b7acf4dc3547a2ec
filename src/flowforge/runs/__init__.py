"""Run directories: what the command line makes and reads, as Python functions.

A run is a directory with ``config.yaml`` and the outputs of a command: the model, its
checkpoint, ``metrics.jsonl``, ``eval.json``, figures. ``fit_run`` / ``vi_run`` make one;
``evaluate_run``, ``sample_run``, ``plot_run``, ``inpaint_run``, ``diagnose_run`` and
``plot_vi_run`` read one. The command line is a thin layer over these functions.
"""

from flowforge.runs.density import (
    FIXED_ON_RESUME,
    evaluate_run,
    fit_run,
    format_evaluation,
    parse_context,
    plot_run,
    read_context_file,
    sample_run,
)
from flowforge.runs.directory import (
    CONFIG_FILE,
    MAX_METRICS_BYTES,
    METRICS_FILE,
    read_config,
    read_history,
)
from flowforge.runs.inpainting import inpaint_run, read_images
from flowforge.runs.setup import (
    build_model,
    conditional_models,
    context_dim_of,
    data_kind,
    is_data_file,
    is_image_model,
    load_data,
    make_config,
)
from flowforge.runs.variational import (
    CallableTarget,
    diagnose_run,
    make_target,
    make_vi_config,
    plot_vi_run,
    read_vi_config,
    vi_run,
)

__all__ = [
    "CONFIG_FILE",
    "FIXED_ON_RESUME",
    "MAX_METRICS_BYTES",
    "METRICS_FILE",
    "CallableTarget",
    "build_model",
    "conditional_models",
    "context_dim_of",
    "data_kind",
    "diagnose_run",
    "evaluate_run",
    "fit_run",
    "format_evaluation",
    "inpaint_run",
    "is_data_file",
    "is_image_model",
    "load_data",
    "make_config",
    "make_target",
    "make_vi_config",
    "parse_context",
    "plot_run",
    "plot_vi_run",
    "read_config",
    "read_context_file",
    "read_history",
    "read_images",
    "read_vi_config",
    "sample_run",
    "vi_run",
]
