"""Run directories: fit a configured model to a dataset, then evaluate, sample and plot it.

A run directory holds ``config.yaml`` (the resolved configuration), ``model.json`` and
``model.safetensors`` (see `flowforge.flows.io`), ``checkpoint.safetensors`` (the training
state after the last finished epoch), ``metrics.jsonl`` (one line per epoch), ``eval.json``
and ``plots/``. The command line (`flowforge.cli`) is a thin layer over these functions.

The data are a named dataset or a data file (`flowforge.datasets.files`, recorded in
the config by its absolute path). Data with a context ``(N, k)`` give a conditional flow
``q(x | c)``: the model is built with ``context_dim=k`` (recorded in ``model.json``), trained
and evaluated on the pairs, and sampled given contexts (`sample_run()`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from flowforge.flows.flow import Flow
from flowforge.runs.config import (
    VI_DEFAULTS,
    VI_SCHEMA,
    ConfigError,
    read_yaml,
    resolve,
    write_yaml,
)
from flowforge.runs.setup import build_model, data_kind
from flowforge.runtime import atomic, devices
from flowforge.runtime.files import RunFileError, check_regular_file, read_text
from flowforge.training.distributed import launched_rank
from flowforge.training.results import write_records

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


def _start_run(
    config: Mapping[str, Any],
    out: Path,
    shape: int | tuple[int, ...],
    keep_metrics: bool = False,
    context_dim: int = 0,
) -> Flow:
    """Build the configured model (seeded) and open the run directory with its config,
    removing temporary files that a killed run left there (on rank 0 alone in a
    distributed run)."""
    torch.manual_seed(config["seed"])
    flow = build_model(config, shape, context_dim)
    if launched_rank() != 0:  # a distributed run's directory is rank 0's
        return flow
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
    of at most `flowforge.runtime.files.MAX_TEXT_BYTES`, holding valid options. Anything else is
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
    check_regular_file(path, inside=run_dir)
    return path


def _read_run_config(run_dir: str | Path, vi: bool = False) -> dict[str, Any]:
    """The resolved ``config.yaml`` of a run (see `read_config()`), of a variational run
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
            return resolve(read_yaml(path), None, defaults=VI_DEFAULTS, schema=VI_SCHEMA)
        return resolve(read_yaml(path), None, data_kind)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None


# Values of a metrics record that the plots read as numbers.
_NUMERIC_METRICS = (
    "epoch",
    "step",
    "train_nll",
    "train_fm_loss",
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
    `MAX_METRICS_BYTES`; a line that is not a JSON object, or whose epoch, step, NLL,
    bits/dim, learning rate, ELBO or beta is not a number or null, is refused with one line
    (``ValueError``). An unfinished last line (no newline: a writer killed mid-line) is
    skipped."""
    path = _run_file(run_dir, METRICS_FILE)
    if path is None:
        return []
    text = read_text(path, inside=run_dir, max_bytes=MAX_METRICS_BYTES)
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
            raise RunFileError(f"{path} line {number} is not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise RunFileError(
                f"{path} line {number} holds a JSON {type(record).__name__}; expected an object "
                "of an epoch's (or step's) metrics"
            )
        for key in _NUMERIC_METRICS:
            value = record.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise RunFileError(
                    f"{path} line {number}: {key} is {shown}; expected a number or null"
                )
        records.append(record)
    return records


# --- inpainting ------------------------------------------------------------------------


# --- variational inference ---------------------------------------------------------------
