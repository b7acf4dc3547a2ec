"""Saving and loading flows without pickle: weights in safetensors, architecture in JSON.

A saved model is two files in a directory: ``model.json`` (the builder's name and arguments
from ``flow.config``, the dtype, the flowforge version) and ``model.safetensors`` (the state
dict). Loading rebuilds the architecture from the JSON and fills in the weights, so no code
from the files is ever executed. Training checkpoints are :mod:`flowforge.checkpoint`'s.
Every file is written atomically and durably (:mod:`flowforge.atomic`).

Files from elsewhere are not trusted: :func:`load` reads only regular files inside the
directory (no FIFO, device, directory, or symbolic link out of it; see
:func:`check_regular_file`), refuses a ``model.json`` over :data:`MAX_TEXT_BYTES`, checks the
description and the size of its model (:func:`flowforge.models.build`) before building it,
and checks every tensor's name, shape and dtype in ``model.safetensors`` before loading
them. Each problem is one line (a :class:`RunFileError`, a
:class:`~flowforge.limits.BudgetError` or a ``FileNotFoundError``) naming the file, what is
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

from . import atomic, devices, limits
from .flow import Flow

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
FORMAT = "flowforge-model/1"
MAX_TEXT_BYTES = 4 * 2**20  # model.json and config.yaml larger than this are refused
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


class RunFileError(ValueError):
    """A file of a saved model or run directory that cannot be used: not a regular file, a
    link out of its directory, too large, or malformed."""


def one_line(error: BaseException) -> str:
    """An error's message on one line of at most 300 characters (its type if it has none)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular_file(
    path: str | os.PathLike,
    *,
    inside: str | os.PathLike | None = None,
    max_bytes: int | None = None,
    what: str | None = None,
) -> os.stat_result:
    """The ``os.stat`` of ``path``, checked, without opening it (opening a FIFO blocks), to be
    a regular file (a symbolic link to one is followed), inside the directory ``inside`` if
    given (a link out of it is refused) and of at most ``max_bytes`` bytes if given.

    Raises ``FileNotFoundError`` if it does not exist, else :class:`RunFileError` for a FIFO,
    device, socket or directory, a broken or looping link, a link out of ``inside``, a file
    that is too large or cannot be looked at. ``what`` names it in the message (default: the
    path)."""
    path = Path(path)
    name = what or str(path)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} does not exist") from None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, no permission
        raise RunFileError(f"{name} cannot be looked at: {one_line(error)}") from None
    try:
        info = os.stat(path)
        real = path.resolve(strict=True)
        home = None if inside is None else Path(inside).resolve(strict=True)
    except PermissionError as error:
        raise RunFileError(f"{name} cannot be looked at: {one_line(error)}") from None
    except (OSError, RuntimeError) as error:
        reason = one_line(error)
        raise RunFileError(f"{name} is a broken or looping symbolic link ({reason})") from None
    if home is not None and not real.is_relative_to(home):
        raise RunFileError(
            f"{name} is a symbolic link to {real}, outside {home}; only files inside the "
            "directory are read"
        )
    if not stat.S_ISREG(info.st_mode):
        raise RunFileError(f"{name} is {_kind(info.st_mode)}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise RunFileError(
            f"{name} is {info.st_size:,} bytes, above the limit of {max_bytes:,} for this file"
        )
    return info


def read_text(
    path: str | os.PathLike,
    *,
    inside: str | os.PathLike | None = None,
    max_bytes: int = MAX_TEXT_BYTES,
    what: str | None = None,
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes (see
    :func:`check_regular_file`, whose errors it raises; text that is not UTF-8, or a file
    that turns into something else while it is opened, is a :class:`RunFileError`)."""
    name = what or str(path)
    check_regular_file(path, inside=inside, max_bytes=max_bytes, what=what)
    try:
        # Non-blocking, so that a FIFO put in the file's place after the check cannot hang.
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise RunFileError(f"{name} cannot be read: {one_line(error)}") from None
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise RunFileError(f"{name} is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RunFileError(f"{name} is larger than the limit of {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(
            f"{name} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


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
    from . import __version__

    if flow.config is None:
        raise ValueError(
            "this flow has no config (it was not made by a builder in flowforge.models); "
            "save flow.state_dict() with safetensors yourself, or build it with flowforge.models"
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
    """Rebuild a saved flow from ``directory`` (a run directory or a :func:`save` target).

    The files are checked before anything is built or loaded, each problem one line naming the
    file: ``model.json`` and ``model.safetensors`` must be regular files inside
    ``directory`` (see :func:`check_regular_file`); ``model.json`` (at most
    :data:`MAX_TEXT_BYTES`) must be this format's JSON object, with a floating-point
    ``dtype`` and a ``config`` of JSON numbers, strings, booleans, nulls and lists of them
    that names a known model; the model must fit ``max_parameters`` parameters and buffers
    (default: ``FLOWFORGE_MAX_PARAMETERS``; :func:`flowforge.models.build`); and the weights
    must be a readable safetensors file holding exactly the model's tensors, of its shapes
    and dtypes. ``device`` (default: the CPU) must exist on this machine
    (:func:`flowforge.devices.resolve`). Raises ``FileNotFoundError`` for a missing
    directory or file, :class:`~flowforge.limits.BudgetError` for a model too large, and
    :class:`RunFileError` (a ``ValueError``) for the rest.
    """
    from . import models

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
    """The checked content of a ``model.json``: ``format`` :data:`FORMAT`, ``dtype`` one of
    :data:`FLOAT_DTYPES` (default float32), ``config`` an object whose ``model`` is a name in
    :data:`flowforge.models.MODELS` and whose other values are JSON numbers, strings,
    booleans, nulls or lists of them. Other keys are ignored. Raises :class:`RunFileError`
    (or ``FileNotFoundError``) with one line otherwise."""
    from . import models

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
    each of the shape and dtype there. Raises :class:`RunFileError` with one line (the first
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
