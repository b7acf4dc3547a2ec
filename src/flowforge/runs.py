"""Run directories: fit a configured model to a dataset, then evaluate, sample and plot it.

A run directory holds ``config.yaml`` (the resolved configuration), ``model.json`` and
``model.safetensors`` (see :mod:`flowforge.io`), ``checkpoint.safetensors`` (the training
state after the last finished epoch), ``metrics.jsonl`` (one line per epoch), ``eval.json``
and ``plots/``. The command line (:mod:`flowforge.cli`) is a thin layer over these functions.

The data are a named dataset or a data file (:mod:`flowforge.datasets.files`, recorded in
the config by its absolute path). Data with a context ``(N, k)`` give a conditional flow
``q(x | c)``: the model is built with ``context_dim=k`` (recorded in ``model.json``), trained
and evaluated on the pairs, and sampled given contexts (:func:`sample_run`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic, datasets, devices, interrupts, io, limits, models, plots
from .baselines import GaussianBaseline, LinearGaussianBaseline
from .config import VI_DEFAULTS, ConfigError, finite_number, read_yaml, resolve, write_yaml
from .datasets.base import Dataset, Split
from .datasets.files import read_csv
from .flow import Flow
from .training import (
    DivergenceError,
    History,
    fit,
    nll_values,
    report_of,
    write_metrics,
    write_records,
)
from .variational import VariationalHistory, fit_variational

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


def data_kind(name: str) -> str:
    """The key of a dataset in :data:`flowforge.config.DATA_DEFAULTS`: ``"toy"``, an image
    set's name, or ``"tabular"`` for a data file."""
    if name in datasets.TOYS:
        return "toy"
    return "tabular" if is_data_file(name) else name


def is_data_file(name: str) -> bool:
    """Whether the config value ``data`` is a data file rather than a named dataset."""
    return name not in datasets.DATASETS and datasets.is_data_file(name)


def context_dim_of(flow: Flow) -> int:
    """The width ``k`` of the context a flow is conditioned on (0: not conditional)."""
    return int((flow.config or {}).get("context_dim") or 0)


def make_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The checked configuration of a run: defaults < the data's defaults < file < flags."""
    file_values = read_yaml(config_file) if config_file else {}
    config = resolve(file_values, overrides, data_kind)
    given = set(file_values) | {k for k, v in (overrides or {}).items() if v is not None}
    _check_given_once(config, file_values, overrides, ("layers", "hidden"))
    config["model_args"] = dict(config["model_args"])
    config["_given"] = sorted(given)
    if is_data_file(config["data"]):  # so that eval, sample and plot work from anywhere
        config["data"] = str(Path(config["data"]).expanduser().resolve())
    return config


def is_image_model(name: str) -> bool:
    """Whether the builder ``name`` takes an image ``shape`` (else a vector ``dim``)."""
    return name in models.MODELS and "shape" in inspect.signature(models.MODELS[name]).parameters


def load_data(config: Mapping[str, Any]) -> tuple[Dataset, tuple[int, ...]]:
    """The configured dataset, flattened to vectors unless the model is an image model, and
    the shape of one sample before flattening."""
    name, columns = config["data"], config.get("context_columns")
    if name not in datasets.DATASETS and not datasets.is_data_file(name):
        raise ConfigError(
            f"config value 'data' must be one of {', '.join(datasets.DATASETS)}, "
            f"or a .npz, .npy or .csv file, got {name!r}"
        )
    if columns is not None and name in datasets.DATASETS:
        raise ConfigError(
            f"config value 'context_columns' applies to data files only, not to {name!r}"
        )
    data = datasets.load(
        name,
        n=config["n"],
        seed=config["seed"],
        data_dir=config["data_dir"],
        context_columns=columns,
    )
    shape = tuple(data.event_shape)
    if is_image_model(config["model"]):
        if len(shape) != 3:
            raise ConfigError(
                f"model {config['model']!r} needs images (channels, height, width), but "
                f"{config['data']!r} has samples of shape {shape}"
            )
        return data, shape
    return data.flatten(), shape


def conditional_models() -> list[str]:
    """The model builders that take a context (a ``context_dim`` argument)."""
    return [
        name
        for name, builder in models.MODELS.items()
        if "context_dim" in inspect.signature(builder).parameters
    ]


def build_model(
    config: Mapping[str, Any], shape: int | tuple[int, ...], context_dim: int = 0
) -> Flow:
    """The configured model for data of ``shape`` (a vector width for vector models), with a
    context of ``context_dim`` values per sample (0: unconditional)."""
    name = config["model"]
    if name not in models.MODELS:
        raise ConfigError(
            f"config value 'model' must be one of {', '.join(models.MODELS)}, got {name!r}"
        )
    parameters = inspect.signature(models.MODELS[name]).parameters
    accepted = set(parameters)
    given = set(config.get("_given", ()))
    size = "shape" if "shape" in accepted else "dim"
    if size == "shape" and len(_as_tuple(shape)) != 3:
        raise ConfigError(
            f"model {name!r} is an image model: it needs images (channels, height, width), "
            f"not vectors of {math.prod(_as_tuple(shape))} values; see flowforge list"
        )
    kwargs: dict[str, Any] = {size: shape if size == "shape" else math.prod(_as_tuple(shape))}
    if "context_dim" in config["model_args"]:
        raise ConfigError(
            "model argument 'context_dim' is set by the data (the width of their context); "
            "do not give it"
        )
    if context_dim:
        if "context_dim" not in accepted:
            raise ConfigError(
                f"model {name!r} is not conditional; the data have a context of "
                f"{context_dim} value{'s' if context_dim != 1 else ''}, so use one of "
                f"{', '.join(conditional_models())}"
            )
        kwargs["context_dim"] = context_dim
    for key in ("layers", "hidden"):
        if config[key] is None:
            continue
        if key in accepted:
            kwargs[key] = tuple(config[key]) if key == "hidden" else config[key]
        elif key in given:
            raise ConfigError(f"model {name!r} has no option {key!r}")
    for key, value in config["model_args"].items():
        if (key not in accepted or key == size) and "model_args" not in given:
            continue  # a data default that this model does not take
        if key not in accepted or key == size:
            raise ConfigError(
                f"model {name!r} has no option {key!r}; it takes "
                f"{', '.join(sorted(accepted - {size}))}"
            )
        kwargs[key] = _checked_argument(name, key, value, parameters[key].annotation)
    try:  # checked against FLOWFORGE_MAX_PARAMETERS before anything is allocated
        return models.build({"model": name, **kwargs})
    except limits.BudgetError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {name!r}: {error}") from None


def _check_given_once(
    config: Mapping[str, Any],
    file_values: Mapping[str, Any],
    overrides: Mapping[str, Any] | None,
    keys: tuple[str, ...],
) -> None:
    """An option that is a config key (``--hidden``, ``hidden:``) must not also be given as a
    model argument (``--model-arg hidden=...``): which of the two would win is a guess."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in keys:
        if key not in config["model_args"] or (key not in overrides and key not in file_values):
            continue
        flag = f"--{key.replace('_', '-')}" if key in overrides else f"config key {key!r}"
        where = "--model-arg" if "model_args" in overrides else "the config file's model_args"
        raise ConfigError(
            f"{key!r} is given twice, as {flag} and as model argument {key}="
            f"{config['model_args'][key]!r} ({where}); give it once"
        )


# What a model builder's annotation asks of an argument: (check, what it must be).
_ARGUMENT_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: finite_number(v) is not None, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Sequence[int]": (
        lambda v: (
            isinstance(v, list | tuple)
            and all(isinstance(h, int) and not isinstance(h, bool) for h in v)
        ),
        "a list of integers such as [64, 64]",
    ),
}


def _checked_argument(model: str, key: str, value: Any, annotation: Any) -> Any:
    """A model argument checked against its builder's annotation (``bool``, ``int``,
    ``float | None``, ...): a string where a bool is expected (``actnorm=maybe``) is an
    error, not a truthy value. Numbers for a float are returned as floats."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    optional = text.endswith(" | None")
    text = text.removesuffix(" | None")
    if text not in _ARGUMENT_TYPES or (optional and value is None):
        return value
    check, expected = _ARGUMENT_TYPES[text]
    if not check(value):
        expected += " or null" if optional else ""
        raise ConfigError(f"model argument {key!r} of {model!r} must be {expected}, got {value!r}")
    return finite_number(value) if text == "float" else value


def _as_tuple(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


# What a resumed run must share with the run it continues: they change the model, the data
# or the optimisation. The others (epochs, lr, clip, patience, checkpointing, divergence
# handling, device, progress, plots, TensorBoard) may change; fit records the changes.
FIXED_ON_RESUME = (
    "data",
    "model",
    "n",
    "data_dir",
    "context_columns",
    "seed",
    "batch_size",
    "dtype",
    "layers",
    "hidden",
    "model_args",
    "weight_decay",
    "schedule",
)


def fit_run(
    config: Mapping[str, Any], out: str | Path, resume: bool = False
) -> tuple[Flow, History]:
    """Train the configured model and write the run directory ``out``.

    With ``resume``, training continues from ``out``'s checkpoint; a configuration that
    changes the model, the data or the optimisation (:data:`FIXED_ON_RESUME`) is refused
    with a message naming the options. A signal stops training after the step under way:
    the checkpoint, the model and the metrics are written and
    :class:`flowforge.interrupts.Interrupted` is raised (no plots); a signal while plotting
    leaves the run whole without its figures. On a divergence beyond the rollbacks the
    model saved is the last good one and :class:`flowforge.training.DivergenceError` is
    raised."""
    out = Path(out)
    if resume:
        _check_resume(config, out)
    data, shape = load_data(config)
    flow = _start_run(
        config,
        out,
        tuple(data.train.event_shape),
        keep_metrics=resume,
        context_dim=_context_width(data.train),
    )
    try:
        history = fit(
            flow,
            data.train,
            data.val,
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            lr=config["lr"],
            weight_decay=config["weight_decay"],
            schedule=config["schedule"],
            clip=config["clip"],
            patience=config["patience"],
            progress=config["progress"],
            tensorboard=config["tensorboard"],
            checkpoint=out,
            resume=resume,
            checkpoint_every=config["checkpoint_every"],
            metrics=out / METRICS_FILE,
            divergence_threshold=config["divergence_threshold"],
            rollbacks=config["rollbacks"],
            device=config["device"],
            dtype=getattr(torch, config["dtype"]),
            seed=config["seed"],
        )
    except DivergenceError as error:
        with interrupts.deferred():
            io.save(flow, out)  # the best or last good weights, never non-finite ones
            write_metrics(error.history, out / METRICS_FILE)
        raise
    with interrupts.deferred():
        io.save(flow, out)
        write_metrics(history, out / METRICS_FILE)
    if history.signal is not None:
        stop = interrupts.Interrupted(history.signal)
        stop.saved = f"{history.stopped}; checkpoint and model saved, continue with --resume"
        raise stop
    if config["plots"]:
        try:
            plot_run(out, flow=flow, data=(data, shape), history=history)
        except interrupts.Interrupted as stop:
            stop.saved = f"model saved, plots skipped (draw them with: flowforge plot {out})"
            raise
    return flow, history


def _check_resume(config: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume ``out`` with options that change its model, data or optimisation."""
    if not (out / CONFIG_FILE).exists():
        return  # nothing to compare with: fit starts afresh if there is no checkpoint either
    saved = read_config(out)
    changed = [key for key in FIXED_ON_RESUME if saved.get(key) != config.get(key)]
    if changed:
        details = ", ".join(
            f"--{key.replace('_', '-')} {saved.get(key)!r} -> {config.get(key)!r}"
            for key in changed
        )
        raise ConfigError(
            f"cannot resume {out}: {details} would change the run's model, data or "
            "optimisation; resume with its own options (see its config.yaml) or fit to a new "
            "--out"
        )


def _context_width(split: Split) -> int:
    return 0 if split.context is None else split.context.shape[1]


def _start_run(
    config: Mapping[str, Any],
    out: Path,
    shape: int | tuple[int, ...],
    keep_metrics: bool = False,
    context_dim: int = 0,
) -> Flow:
    """Build the configured model (seeded) and open the run directory with its config,
    removing temporary files that a killed run left there."""
    torch.manual_seed(config["seed"])
    flow = build_model(config, shape, context_dim)
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_orphans(out)
    if not keep_metrics:
        (out / METRICS_FILE).unlink(missing_ok=True)
    write_yaml({k: v for k, v in config.items() if not k.startswith("_")}, out / CONFIG_FILE)
    return flow


def _metrics_writer(out: Path) -> Callable[[dict[str, Any]], None]:
    """A callback that keeps the records and rewrites ``out/metrics.jsonl`` atomically."""
    records: list[dict[str, Any]] = []

    def write(record: dict[str, Any]) -> None:
        records.append(record)
        write_records(records, out / METRICS_FILE)

    return write


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration of a run fitted to data, from its ``config.yaml``: a
    regular file inside the run directory (not a FIFO, device, directory or link out of it)
    of at most :data:`flowforge.io.MAX_TEXT_BYTES`, holding valid options. Anything else is
    one line naming the file (``FileNotFoundError`` if it or the directory is missing, else a
    ``ValueError``)."""
    return _read_run_config(run_dir)


def _run_device(run_dir: str | Path, config: Mapping[str, Any]) -> torch.device:
    """The device in a run's config, checked to exist on this machine: one line naming the
    run's ``config.yaml`` otherwise."""
    try:
        return devices.resolve(config["device"])
    except (ValueError, TypeError) as error:
        reason = str(error).split("; use --device")[0]
        raise ConfigError(
            f"{Path(run_dir) / CONFIG_FILE}: {reason}; set device: cpu (or auto) in that file "
            "to use this run here"
        ) from None


def _run_file(run_dir: str | Path, name: str) -> Path | None:
    """``run_dir / name`` if it exists (else None), checked to be a regular file inside the
    run directory (no FIFO, device, directory or symbolic link out of it: one line)."""
    run_dir = Path(run_dir)
    path = run_dir / name
    try:
        exists = os.path.lexists(path)
    except ValueError as error:  # a NUL byte in the name
        raise ConfigError(f"{run_dir} cannot be a run directory: {error}") from None
    if not exists:
        return None
    io.check_regular_file(path, inside=run_dir)
    return path


def _read_run_config(run_dir: str | Path, vi: bool = False) -> dict[str, Any]:
    """The resolved ``config.yaml`` of a run (see :func:`read_config`), of a variational run
    with ``vi``."""
    if not Path(run_dir).is_dir():
        if os.path.lexists(run_dir):
            raise ConfigError(f"{run_dir} is not a run directory: it is not a directory")
        raise FileNotFoundError(f"{run_dir} is not a run directory: it does not exist")
    path = _run_file(run_dir, CONFIG_FILE)
    if path is None:
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    try:
        if vi:
            return resolve(read_yaml(path), None, defaults=VI_DEFAULTS)
        return resolve(read_yaml(path), None, data_kind)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None


# Values of a metrics record that the plots read as numbers.
_NUMERIC_METRICS = (
    "epoch",
    "step",
    "train_nll",
    "val_nll",
    "train_bpd",
    "val_bpd",
    "lr",
    "elbo",
    "beta",
)
MAX_METRICS_BYTES = 64 * 2**20


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (none if it is missing), one JSON object a
    line. The file must be a regular file inside the run directory of at most
    :data:`MAX_METRICS_BYTES`; a line that is not a JSON object, or whose epoch, step, NLL,
    bits/dim, learning rate, ELBO or beta is not a number or null, is refused with one line
    (``ValueError``). An unfinished last line (no newline: a writer killed mid-line) is
    skipped."""
    path = _run_file(run_dir, METRICS_FILE)
    if path is None:
        return []
    text = io.read_text(path, inside=run_dir, max_bytes=MAX_METRICS_BYTES)
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            if number == len(lines):  # the last line, without its newline: unfinished
                break
            raise io.RunFileError(f"{path} line {number} is not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise io.RunFileError(
                f"{path} line {number} holds a JSON {type(record).__name__}; expected an object "
                "of an epoch's (or step's) metrics"
            )
        for key in _NUMERIC_METRICS:
            value = record.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise io.RunFileError(
                    f"{path} line {number}: {key} is {shown}; expected a number or null"
                )
        records.append(record)
    return records


def _check_context(flow: Flow, split: Split, name: str) -> int:
    """The context width of a run's flow, checked against its data's."""
    flow_k, data_k = context_dim_of(flow), _context_width(split)
    if flow_k != data_k:
        raise ValueError(
            f"the run's flow is conditioned on {flow_k} context values but its data {name} "
            f"have {data_k}; was the data file changed after fitting?"
        )
    return flow_k


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """The flow's NLL on a split beside a full-covariance Gaussian and, for toys, the true
    entropy (so NLL - H = KL(p || q)); written to ``eval.json``.

    For data with a context the flow's NLL is the conditional one, ``-log q(x_i | c_i)`` at
    each sample's own context; beside it are a Gaussian linear in the context
    (:class:`LinearGaussianBaseline`, ``conditional_gaussian``) and the full-covariance
    Gaussian of ``x`` alone, which ignores the context."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    data, _ = load_data(config)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    samples = getattr(data, split)
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    context_dim = _check_context(flow, samples, config["data"])
    gaussian_model = GaussianBaseline(data.train)
    nll = {
        "flow": nll_values(flow, samples),
        "gaussian": nll_values(gaussian_model, Split(samples.x, samples.levels)),
    }
    if context_dim:
        nll["conditional_gaussian"] = nll_values(LinearGaussianBaseline(data.train), samples)
    report, gaussian = report_of(nll["flow"], samples), report_of(nll["gaussian"], samples)
    result: dict[str, Any] = {
        "data": config["data"],
        "model": config["model"],
        "split": split,
        "context_dim": context_dim,
        "flow": report.as_dict(),
        "gaussian": gaussian.as_dict(),
        "entropy": data.entropy,
        "kl": None if data.entropy is None else report.nll - data.entropy,
        "gaussian_kl": None if data.entropy is None else gaussian.nll - data.entropy,
    }
    if context_dim:
        result["conditional_gaussian"] = report_of(nll["conditional_gaussian"], samples).as_dict()
    if data.log_prob is not None:
        # KL(p || q) = E_p[log p - log q], estimated on the same points: the paired
        # difference varies far less than the NLL itself, so its standard error is small.
        true_nll = -data.log_prob(samples.x.double()).double()
        for name, values in nll.items():
            gap = values - true_nll
            result[f"{name}_kl_paired"] = {
                "kl": gap.mean().item(),
                "se": gap.std().item() / math.sqrt(len(gap)),
            }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_evaluation(result: Mapping[str, Any]) -> str:
    """The table that ``flowforge eval`` prints."""
    discrete = result["flow"]["bits_per_dim"] is not None
    header = f"{'model':<22} {'NLL (nats)':>12} {'s.e.':>8}"
    header += f" {'bits/dim':>9}" if discrete else ""
    header += f" {'NLL - H(p)':>11}" if result["entropy"] is not None else ""
    paired = "flow_kl_paired" in result
    header += f" {'KL(p||q), paired':>17} {'s.e.':>7}" if paired else ""
    context_dim = result.get("context_dim") or 0
    title = f"{result['data']}, {result['split']} split, {result['flow']['n']} samples"
    plural = "s" if context_dim != 1 else ""
    title += f", each with a context of {context_dim} value{plural}" if context_dim else ""
    lines = [title, header]
    if context_dim:
        rows = [(f"{result['model']} q(x|c)", "flow", result["kl"])]
        rows.append(("linear-Gaussian p(x|c)", "conditional_gaussian", None))
    else:
        rows = [(result["model"], "flow", result["kl"])]
    rows.append(("full-covariance Gaussian", "gaussian", result["gaussian_kl"]))
    for name, key, kl in rows:
        report = result[key]
        line = f"{name:<24} {report['nll']:>12.4f} {report['nll_se']:>8.4f}"
        line += f" {report['bits_per_dim']:>9.4f}" if discrete else ""
        line += f" {kl:>11.4f}" if kl is not None else ""
        if paired:
            line += f" {result[key + '_kl_paired']['kl']:>17.4f}"
            line += f" {result[key + '_kl_paired']['se']:>7.4f}"
        lines.append(line)
    if result["entropy"] is not None:
        lines.append(f"{'true entropy H(p)':<24} {result['entropy']:>12.4f}")
    if paired:
        lines.append("KL(p||q), paired: mean of log p(x) - log q(x) over the same test points")
    if context_dim:
        lines.append(
            "conditional NLL: -log q(x|c) at each sample's own context; the full-covariance "
            "Gaussian ignores the context"
        )
    return "\n".join(lines)


def sample_run(
    run_dir: str | Path,
    n: int,
    temperature: float = 1.0,
    seed: int | None = None,
    context: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """``n`` samples of a trained run, in model space (``[0, 1]`` for images).

    A conditional run needs a ``context``: one context ``(k,)`` gives ``n`` samples
    ``(n, D)`` of ``q(x | c)``; ``m`` contexts ``(m, k)`` give ``n`` samples for each,
    ``(m, n, D)``. An unconditional run takes none. ``n`` must be positive (and
    ``temperature`` finite and >= 0, as :meth:`flowforge.Flow.sample` checks); samples above
    :func:`flowforge.limits.max_elements` numbers are refused before they are drawn."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    if seed is not None:
        torch.manual_seed(seed)
    flow = io.load(run_dir)
    k = context_dim_of(flow)
    if k and context is None:
        raise ValueError(
            f"run {run_dir} is conditional on a context of {k} values; give one "
            f"(--context with {k} comma-separated numbers, or --context-file)"
        )
    if not k and context is not None:
        raise ValueError(f"run {run_dir} is not conditional; it takes no context")
    size = math.prod(flow.event_shape)
    shape = tuple(flow.event_shape)
    if context is None:
        limits.check_elements(n * size, f"{n:,} samples of shape {shape}")
        return flow.sample(n, temperature=temperature).cpu().numpy()
    values = torch.as_tensor(np.asarray(context, dtype=np.float64)).to(flow.dtype)
    single = values.dim() == 1
    values = values.reshape(1, -1) if single else values
    if values.dim() != 2 or values.shape[1] != k or len(values) == 0:
        raise ValueError(
            f"run {run_dir} needs contexts of {k} values (shape ({k},) or (m, {k})), got "
            f"shape {tuple(np.shape(context))}"
        )
    if not torch.isfinite(values).all():
        raise ValueError("the context contains NaN or infinite values")
    count = f"{n:,} samples of shape {shape} for each of {len(values):,} contexts"
    limits.check_elements(len(values) * n * size, count)
    samples = flow.sample(n, context=values, temperature=temperature)
    return (samples[0] if single else samples).cpu().numpy()


def parse_context(text: str) -> np.ndarray:
    """One context vector ``(k,)`` from numbers separated by commas (or spaces)."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    try:
        values = np.array([float(item) for item in items], dtype=np.float64)
    except ValueError:
        values = np.array([])
    if len(values) == 0 or not np.isfinite(values).all():
        raise ValueError(
            f"--context must be finite numbers separated by commas, such as 0.1,0.2, got {text!r}"
        )
    return values


def read_context_file(path: str | Path) -> np.ndarray:
    """Contexts ``(m, k)`` (or one ``(k,)``) from a ``.npy`` file (read without pickle) or a
    ``.csv`` file of numbers (a header line is allowed)."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"a context file must be .npy or .csv, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"context file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return read_csv(path)[0]
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = (str(error).splitlines() or ["unreadable"])[0]
        raise ValueError(f"{path} is not a usable .npy file: {reason}") from None
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
        raise ValueError(f"{path} must hold an array of numbers")
    return values


def plot_run(
    run_dir: str | Path,
    flow: Flow | None = None,
    data: tuple[Dataset, tuple[int, ...]] | None = None,
    history: History | list[dict[str, Any]] | None = None,
    temperature: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the run's figures into ``run_dir/plots`` and return their paths.

    For a conditional run the density, sample and layer figures (of an unconditional
    ``q(x)``) are skipped, saying so through ``log``; ``conditional_samples.png`` shows
    ``q(x | c)`` for a few test contexts instead
    (:func:`flowforge.plots.plot_conditional_samples`)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    flow = flow if flow is not None else io.load(run_dir)
    data, shape = data if data is not None else load_data(config)
    history = history.epochs if isinstance(history, History) else history
    history = history if history is not None else read_history(run_dir)
    folder = run_dir / "plots"
    written = []
    if history:
        written.append(plots.plot_losses(history, folder / "loss.png", title=config["data"]))
    torch.manual_seed(config["seed"])
    if data.train.context is not None:
        _check_context(flow, data.test, config["data"])
        if log is not None:
            log(
                "conditional run: no density, sample or layer figures of q(x) (they need an "
                "unconditional flow); drawing samples of q(x|c) for a few test contexts"
            )
        written.append(
            plots.plot_conditional_samples(
                flow,
                data.train,
                data.test,
                folder / "conditional_samples.png",
                temperature=temperature,
                title=f"{Path(config['data']).name}: {config['model']} q(x|c)",
            )
        )
        return written
    test = data.test.x.to(flow.dtype)
    if data.train.dim == 2:
        written.append(
            plots.plot_density_2d(flow, test, folder / "density.png", true_log_prob=data.log_prob)
        )
        written.append(plots.plot_samples_2d(flow, test, folder / "samples.png"))
        written.append(plots.plot_layers_2d(flow, test[:2000], folder / "layers.png"))
    elif data.train.discrete:
        written.append(
            plots.plot_samples_images(
                flow, folder / "samples.png", n=64, temperature=temperature, image_shape=shape
            )
        )
        images = data.test.dequantize(data.test.x[:64]).reshape(-1, *shape)
        written.append(plots.plot_image_grid(images, folder / "data.png", title="test data"))
        for cold in (0.7, 0.0):
            written.append(
                plots.plot_samples_images(
                    flow,
                    folder / f"samples-T{cold:g}.png",
                    n=64,
                    temperature=cold,
                    image_shape=shape,
                )
            )
        pairs = data.test.dequantize(data.test.x[:12]).to(flow.dtype)
        written.append(
            plots.plot_interpolation(
                flow, pairs[0::2], pairs[1::2], folder / "interpolation.png", image_shape=shape
            )
        )
    return written


# --- inpainting ------------------------------------------------------------------------


def read_images(spec: str, data: Dataset, shape: tuple[int, ...]) -> torch.Tensor:
    """Images to inpaint, as pixel values ``(B, *shape)``: ``spec`` is comma-separated indices
    into the test split (``"0,1,2"``), ``first:N`` for its first ``N`` images, or a ``.npy``
    file of pixel values of that shape (read without pickle)."""
    test = data.test.x.reshape(-1, *shape)
    if spec.endswith(".npy"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"image file {spec} does not exist")
        images = torch.from_numpy(np.load(path, allow_pickle=False)).to(torch.float32)
        images = images.reshape(-1, *shape) if images.numel() % math.prod(shape) == 0 else images
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"{spec}: expected images of shape (N, {shape}), got {images.shape}")
        return images
    try:
        if spec.startswith("first:"):
            indices = list(range(int(spec[len("first:") :])))
        else:
            indices = [int(i) for i in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--image must be test-image indices such as 0,1,2, first:N, or a .npy file; "
            f"got {spec!r}"
        ) from None
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad or not indices:
        raise ValueError(f"test image indices must be in [0, {len(test)}), got {spec!r}")
    return test[indices]


def inpaint_run(
    run_dir: str | Path,
    images: str,
    mask: str,
    out: str | Path,
    *,
    restarts: int = 8,
    steps: int = 1000,
    lr: float = 0.1,
    seed: int = 0,
    baselines: bool = True,
) -> dict[str, Any]:
    """Inpaint images with a trained run's flow as the prior (:func:`flowforge.inpaint`).

    Observed pixels ``k`` sit at the centre of their dequantisation bin, ``(k + 0.5) / L``;
    ``mask`` is ``center``, ``top``, ``random50`` or a mask file (see
    :func:`flowforge.inpainting.make_mask`). Writes ``inpainting.png`` (original, masked,
    inpainted and, with ``baselines``, the mean-image and Gaussian conditional-mean fills),
    ``inpainted.npy`` and ``inpainting.json`` (log p and PSNR of each method), into ``out``.
    """
    from .inpainting import gaussian_fill, inpaint, make_mask, mean_fill, psnr

    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    data, shape = load_data(config)
    if len(shape) != 3 or not data.test.discrete:
        raise ConfigError(f"inpainting needs an image dataset, but {config['data']!r} is not")
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    levels = data.test.levels
    truth = (read_images(images, data, shape) + 0.5) / levels
    missing = make_mask(mask, shape, seed=seed).expand_as(truth)
    torch.manual_seed(seed)
    result = inpaint(flow, truth, missing, restarts=restarts, steps=steps, lr=lr, seed=seed)
    fills = {"flow": result.image}
    if baselines:
        train = Split(data.train.x.reshape(-1, *shape), levels=levels)
        fills["mean image"] = mean_fill(train, truth, missing, bounds=(0.0, 1.0))
        fills["Gaussian"] = gaussian_fill(train, truth, missing, bounds=(0.0, 1.0))
    report: dict[str, Any] = {"run": str(run_dir), "images": images, "mask": mask}
    for name, filled in fills.items():
        scores = psnr(filled, truth, missing)
        report[name] = {"psnr": scores.mean().item(), "psnr_per_image": scores.tolist()}
    # Did the optimiser do its job? The MAP fill should be at least as likely as the truth.
    with torch.no_grad():
        flow.eval()
        truth_log_prob = flow.log_prob(truth.to(flow.dtype).reshape(-1, *flow.event_shape))
    map_log_prob = result.log_prob.reshape(-1).to(truth_log_prob)
    report["flow"]["log_prob"] = map_log_prob.tolist()
    report["flow"]["truth_log_prob"] = truth_log_prob.tolist()
    report["flow"]["map_beats_truth"] = (map_log_prob >= truth_log_prob).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "inpainted.npy", result.image.cpu().numpy())
    (out / "inpainting.json").write_text(json.dumps(report, indent=2) + "\n")
    plots.plot_inpainting(
        truth,
        missing,
        result.image,
        out / "inpainting.png",
        methods=[(name, fill) for name, fill in fills.items() if name != "flow"],
        labels=("original", "masked", f"{config['model']} prior"),
        title=f"{config['data']}: {mask} pixels missing",
    )
    return report


# --- variational inference ---------------------------------------------------------------


class CallableTarget:
    """A user's target given as ``module:function``: the function maps ``(N, dim)`` to the
    unnormalised log-density ``(N,)``; its normaliser is unknown."""

    def __init__(self, spec: str, dim: int | None) -> None:
        module_name, _, function_name = spec.partition(":")
        if not module_name or not function_name:
            raise ConfigError(f"a target must be a name or module:function, got {spec!r}")
        if dim is None:
            raise ConfigError(f"target {spec!r} is a function: give its dimension with --dim")
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            message = f"cannot import module {module_name!r} of target {spec!r}: {error}"
            raise ConfigError(message) from None
        finally:
            sys.path.pop(0)
        self.function = getattr(module, function_name, None)
        if not callable(self.function):
            raise ConfigError(f"module {module_name!r} has no function {function_name!r}")
        self.name, self.dim = spec, dim
        self.bounds = ((-4.0, 4.0), (-4.0, 4.0)) if dim == 2 else None
        self._probe()

    def _probe(self, n: int = 4) -> None:
        """Call the function once on a small batch and check what it returns, so that a wrong
        function fails here with one line rather than inside training."""
        limits.check_elements(n * self.dim, f"a test batch of target {self.name!r}")
        z = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(0))
        expected = (
            f"target {self.name!r} must map a tensor (N, {self.dim}) to log-densities, a "
            f"floating tensor of shape (N,), each finite or -inf"
        )
        try:
            with torch.no_grad():
                out = self.function(z)
        except Exception as error:
            raise ConfigError(
                f"target {self.name!r} failed on a test batch of shape ({n}, {self.dim}): "
                f"{type(error).__name__}: {error}"
            ) from None
        if not isinstance(out, torch.Tensor):
            problem = f"it returned a {type(out).__name__!r} object, not a torch.Tensor"
        elif not out.is_floating_point():
            problem = f"it returned a tensor of dtype {out.dtype}"
        elif tuple(out.shape) != (n,):
            problem = f"it returned a tensor of shape {tuple(out.shape)}"
        elif torch.isnan(out).any() or (out == math.inf).any():
            problem = "it returned NaN or +inf"
        else:
            return
        raise ConfigError(f"{expected}; on a batch of shape ({n}, {self.dim}) {problem}")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.function(z)

    def log_normalizer(self) -> float | None:
        return None


def make_target(config: Mapping[str, Any]):
    """The configured target: a name in :mod:`flowforge.targets` or ``module:function``."""
    from . import targets

    name = config["target"]
    if ":" in name:
        return CallableTarget(name, config["dim"])
    if name not in targets.TARGETS:
        raise ConfigError(
            f"config value 'target' must be one of {', '.join(targets.TARGETS)} or "
            f"module:function, got {name!r}"
        )
    return targets.get(name) if config["dim"] is None else targets.get(name, dim=config["dim"])


def make_vi_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The checked configuration of a variational run: defaults < file < flags."""
    file_values = read_yaml(config_file) if config_file else {}
    config = resolve(file_values, overrides, defaults=VI_DEFAULTS)
    _check_given_once(config, file_values, overrides, ("layers", "hidden", "base"))
    if config["dim"] is not None:
        batch = f"a batch of {config['batch_size']:,} draws of dimension {config['dim']:,}"
        limits.check_elements(config["batch_size"] * config["dim"], batch)
    config["model_args"] = {"base": config["base"], **config["model_args"]}
    config["_given"] = sorted(set(file_values) | {k for k, v in (overrides or {}).items() if v})
    return config


def vi_run(config: Mapping[str, Any], out: str | Path) -> tuple[Flow, VariationalHistory]:
    """Fit the configured flow to the configured target by reverse KL; write the run."""
    out = Path(out)
    target = make_target(config)
    flow = _start_run(config, out, target.dim)
    try:
        history = fit_variational(
            flow,
            target,
            steps=config["steps"],
            batch_size=config["batch_size"],
            lr=config["lr"],
            anneal=config["anneal"],
            schedule=config["schedule"],
            clip=config["clip"],
            progress=config["progress"],
            device=config["device"],
            dtype=getattr(torch, config["dtype"]),
            seed=config["seed"],
            callback=_metrics_writer(out),
        )
    finally:
        with interrupts.deferred():
            io.save(flow, out)
    if history.stopped.startswith("interrupted") and interrupts.pending() is not None:
        stop = interrupts.Interrupted(interrupts.pending())
        stop.saved = f"{history.stopped}; model saved"
        raise stop
    if config["plots"]:
        plot_vi_run(out, flow=flow, target=target, records=history.records)
    return flow, history


def read_vi_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration of a variational run; the file is checked as by
    :func:`read_config`."""
    return _read_run_config(run_dir, vi=True)


def diagnose_run(run_dir: str | Path, n: int = 100_000, seed: int = 0):
    """:func:`flowforge.diagnostics.diagnose` of a variational run; written to
    ``diagnostics.json``."""
    from .diagnostics import diagnose

    run_dir = Path(run_dir)
    config = read_vi_config(run_dir)
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    report = diagnose(flow, make_target(config), n=n, seed=seed)
    result = {"target": config["target"], "model": config["model"], **report.as_dict()}
    (run_dir / "diagnostics.json").write_text(json.dumps(result, indent=2) + "\n")
    return report


def plot_vi_run(
    run_dir: str | Path,
    flow: Flow | None = None,
    target: Any = None,
    records: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """The ELBO curve and, for 2-D targets, the target beside q's density and samples."""
    run_dir = Path(run_dir)
    config = read_vi_config(run_dir)
    flow = flow if flow is not None else io.load(run_dir)
    target = target if target is not None else make_target(config)
    records = records if records is not None else read_history(run_dir)
    folder = run_dir / "plots"
    written = []
    if records:
        written.append(plots.plot_elbo(records, folder / "elbo.png", title=config["target"]))
    if target.dim == 2 and target.bounds is not None:
        title = f"{config['target']}: {config['model']}"
        written.append(
            plots.plot_vi_2d(
                flow, target.log_prob, folder / "density.png", target.bounds, title=title
            )
        )
    return written
