"""A run's data and model from its config: the dataset or data file, the model and its arguments."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flowforge import datasets
from flowforge.datasets.base import Dataset
from flowforge.flows import models
from flowforge.flows.flow import Flow
from flowforge.runs.config import (
    ConfigError,
    finite_number,
    read_yaml,
    resolve,
)
from flowforge.runtime import limits


def data_kind(name: str) -> str:
    """The key of a dataset in `flowforge.runs.config.DATA_DEFAULTS`: ``"toy"``, an image
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
