"""Saving and loading flows without pickle: weights in safetensors, architecture in JSON.

A saved model is two files in a directory: ``model.json`` (the builder's name and arguments
from ``flow.config``, the dtype, the flowforge version) and ``model.safetensors`` (the state
dict). Loading rebuilds the architecture from the JSON and fills in the weights, so no code
from the files is ever executed. Training checkpoints are `flowforge.training.checkpoint`'s.
Every file is written atomically and durably (`flowforge.runtime.atomic`).

Files from elsewhere are not trusted: `load()` reads only regular files inside the
directory (no FIFO, device, directory, or symbolic link out of it; see
`check_regular_file()`), refuses a ``model.json`` over `MAX_TEXT_BYTES`, checks the
description and the size of its model (`flowforge.flows.models.build()`) before building it,
and checks every tensor's name, shape and dtype in ``model.safetensors`` before loading
them. Each problem is one line (a `RunFileError`, a
`BudgetError` or a ``FileNotFoundError``) naming the file, what is
wrong and what was expected.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from flowforge.flows.flow import Flow
from flowforge.runtime import atomic, devices, limits
from flowforge.runtime.files import (
    RunFileError,
    check_regular_file,
    one_line,
    read_text,
)
from flowforge.runtime.version import __version__

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
FORMAT = "flowforge-model/1"
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# How safetensors names the dtypes of a model's tensors.
SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None):
    """Write ``tensors`` to the safetensors file ``path`` atomically and durably."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic.replacing(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def _atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` atomically and durably."""
    atomic.write_text(path, text)


def save(flow: Flow, directory: str | Path) -> Path:
    """Write ``model.json`` and ``model.safetensors`` for ``flow`` into ``directory``."""
    if flow.config is None:
        raise ValueError(
            "this flow has no config (it was not made by a builder in ff.models); "
            "save flow.state_dict() with safetensors yourself, or build it with ff.models"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save(flow.state_dict(), directory / MODEL_WEIGHTS)
    description = {
        "format": FORMAT,
        "flowforge": __version__,
        "dtype": str(flow.dtype).removeprefix("torch."),
        "config": flow.config,
    }
    _atomic_write_text(json.dumps(description, indent=2) + "\n", directory / MODEL_JSON)
    return directory


def load(
    directory: str | Path,
    device: str | torch.device | None = None,
    *,
    max_parameters: int | None = None,
) -> Flow:
    """Rebuild a saved flow from ``directory`` (a run directory or a `save()` target).

    The files are checked before anything is built or loaded, each problem one line naming the
    file: ``model.json`` and ``model.safetensors`` must be regular files inside
    ``directory`` (see `check_regular_file()`); ``model.json`` (at most
    `MAX_TEXT_BYTES`) must be this format's JSON object, with a floating-point
    ``dtype`` and a ``config`` of JSON numbers, strings, booleans, nulls and lists of them
    that names a known model; the model must fit ``max_parameters`` parameters and buffers
    (default: ``FLOWFORGE_MAX_PARAMETERS``; `flowforge.flows.models.build()`); and the weights
    must be a readable safetensors file holding exactly the model's tensors, of its shapes
    and dtypes. ``device`` (default: the CPU) must exist on this machine
    (`flowforge.runtime.devices.resolve()`). Raises ``FileNotFoundError`` for a missing
    directory or file, `BudgetError` for a model too large, and
    `RunFileError` (a ``ValueError``) for the rest.
    """
    from flowforge.flows import models

    target = devices.resolve(device)
    directory = Path(directory)
    try:
        is_directory = stat.S_ISDIR(os.stat(directory).st_mode)
        holds = "holds"
    except FileNotFoundError:  # said below, as for a directory without the files
        is_directory, holds = True, "does not exist, so holds"
    except (OSError, ValueError) as error:
        raise RunFileError(f"{directory} cannot be looked at: {one_line(error)}") from None
    if not is_directory:
        raise RunFileError(f"{directory} is not a directory (expected a run directory)")
    description_path, weights_path = directory / MODEL_JSON, directory / MODEL_WEIGHTS
    missing = [p.name for p in (description_path, weights_path) if not os.path.lexists(p)]
    if missing:
        raise FileNotFoundError(
            f"{directory} {holds} no saved flow: missing {', '.join(missing)} "
            f"(expected the output of flowforge fit or flowforge.save)"
        )
    check_regular_file(weights_path, inside=directory)
    description = read_description(description_path, inside=directory)
    try:
        flow = models.build(description["config"], max_parameters=max_parameters)
    except limits.BudgetError as error:
        raise limits.BudgetError(f"{description_path}: {one_line(error)}") from None
    except (ValueError, TypeError) as error:
        raise RunFileError(f"{description_path}: {one_line(error)}") from None
    flow = flow.to(getattr(torch, description["dtype"]))
    flow.load_state_dict(read_weights(weights_path, flow))
    return flow.to(target).eval()


def _json_kind(value: Any) -> str:
    """What JSON calls the type of a parsed value."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"the non-finite number {value}"
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    kinds.update({int: "a number", float: "a number", type(None): "null"})
    return kinds.get(type(value), type(value).__name__)


def _json_value(value: Any) -> bool:
    """A JSON number (finite), string, boolean or null."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def read_description(path: str | os.PathLike, inside: str | os.PathLike | None = None) -> dict:
    """The checked content of a ``model.json``: ``format`` `FORMAT`, ``dtype`` one of
    `FLOAT_DTYPES` (default float32), ``config`` an object whose ``model`` is a name in
    `flowforge.flows.models.MODELS` and whose other values are JSON numbers, strings,
    booleans, nulls or lists of them. Other keys are ignored. Raises `RunFileError`
    (or ``FileNotFoundError``) with one line otherwise."""
    from flowforge.flows import models

    path = Path(path)
    text = read_text(path, inside=inside)
    try:
        description = json.loads(text)
    except RecursionError:
        raise RunFileError(f"{path} is nested too deeply to be a model description") from None
    except ValueError as error:  # json.JSONDecodeError, or an integer of too many digits
        raise RunFileError(f"{path} is not valid JSON: {one_line(error)}") from None
    expected = f"a flowforge model description ({FORMAT}: an object of format, dtype, config)"
    if not isinstance(description, dict):
        raise RunFileError(f"{path} holds {_json_kind(description)}; expected {expected}")
    if description.get("format") != FORMAT:
        raise RunFileError(
            f"{path} is not {expected}: format is {description.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    dtype = description.setdefault("dtype", "float32")
    if dtype not in FLOAT_DTYPES:
        raise RunFileError(
            f"{path}: dtype {dtype!r} is not a floating-point dtype; expected one of "
            f"{', '.join(FLOAT_DTYPES)}"
        )
    config = description.get("config")
    if not isinstance(config, dict):
        raise RunFileError(
            f"{path}: config must be an object of a model's name and arguments, got "
            f"{'nothing' if config is None else _json_kind(config)}"
        )
    name = config.get("model")
    if not isinstance(name, str) or name not in models.MODELS:
        raise RunFileError(
            f"{path}: config names the model {name!r}; expected one of "
            f"{', '.join(sorted(models.MODELS))}"
        )
    for key, value in config.items():
        if not (_json_value(value) or (isinstance(value, list) and all(map(_json_value, value)))):
            kind = "an array with a nested or non-finite entry" if isinstance(value, list) else None
            raise RunFileError(
                f"{path}: config value {key!r} is {kind or _json_kind(value)}; expected a "
                "finite number, string, boolean, null or a list of those"
            )
    return description


def _shape(shape: Any) -> str:
    return str(tuple(shape))


def read_weights(path: str | os.PathLike, flow: Flow) -> dict[str, Tensor]:
    """The tensors of a ``model.safetensors`` file for ``flow``, checked before they are
    loaded: a readable safetensors file holding exactly the names in ``flow.state_dict()``,
    each of the shape and dtype there. Raises `RunFileError` with one line (the first
    missing, unexpected or mismatched tensor) otherwise."""
    path = Path(path)
    expected = flow.state_dict()
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = {}
            names = handle.keys()  # a list (a safe_open handle is not iterable)
            for key in names:
                part = handle.get_slice(key)
                found[key] = (tuple(part.get_shape()), part.get_dtype())
    except Exception as error:  # safetensors raises SafetensorError, OSError, ...
        raise RunFileError(
            f"{path} is not a readable safetensors file: {one_line(error)}"
        ) from None
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            parts.append(f"lacks tensor {missing[0]!r}{more}")
        if unexpected:
            more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
            parts.append(f"has unexpected tensor {unexpected[0]!r}{more}")
        raise RunFileError(f"{path} {' and '.join(parts)} for the model of {MODEL_JSON}")
    for key, tensor in expected.items():
        shape, dtype = found[key]
        if shape != tuple(tensor.shape):
            raise RunFileError(
                f"{path}: tensor {key!r} has shape {_shape(shape)} but the model of "
                f"{MODEL_JSON} expects {_shape(tensor.shape)}"
            )
        wanted = SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype))
        if dtype != wanted:
            raise RunFileError(
                f"{path}: tensor {key!r} has dtype {dtype} but the model of {MODEL_JSON} "
                f"expects {wanted} ({str(tensor.dtype).removeprefix('torch.')})"
            )
    try:
        return load_file(str(path))
    except Exception as error:
        raise RunFileError(
            f"{path} is not a readable safetensors file: {one_line(error)}"
        ) from None
