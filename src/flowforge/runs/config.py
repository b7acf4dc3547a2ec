"""Run configuration: defaults, then a YAML file, then command-line flags; every value checked.

A bad value gives one `ConfigError` line naming the key, what it must be, and what it
was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from flowforge.runtime import options
from flowforge.runtime.options import Option
from flowforge.training import options as training_options

DEFAULTS: dict[str, Any] = {
    "data": "two-moons",  # a dataset name, or a .npz / .npy / .csv file (flowforge.datasets)
    "model": "realnvp",
    "n": None,  # samples for the toys (None: 20,000); a limit on training images for MNIST;
    # for a data file, a random subset of n rows
    "data_dir": None,
    "context_columns": None,  # columns of a data file that are the context, e.g. "0,1"
    "seed": 0,
    "epochs": 100,
    "batch_size": 256,
    "lr": 1e-3,
    "adam_betas": None,  # Adam's (beta1, beta2), e.g. [0.9, 0.99] (None: torch's 0.9, 0.999)
    "adam_eps": None,  # Adam's epsilon (None: torch's 1e-8)
    "weight_decay": 0.0,
    "schedule": "cosine",
    "clip": None,
    "patience": None,
    "checkpoint_every": None,  # steps between checkpoints inside an epoch (None: epoch ends)
    "divergence_threshold": 10.0,  # a step's loss this many spreads above the running loss
    "rollbacks": 5,  # rollbacks (with a halved learning rate) before a divergence stops a run
    "objective": "likelihood",  # or "flow-matching" (continuous flows, flowforge.training)
    "coupling": "independent",  # flow matching's pairing of noise and data: "ot", "sinkhorn"
    "coupling_reg": 0.05,  # the entropic regulariser of the "sinkhorn" pairing
    "sigma_min": 0.0,  # flow matching's path width at the data
    "compile": "auto",  # torch.compile the training step: "auto" (when it pays), true, false
    "precision": "float32",  # or "bf16": the networks' products in bfloat16
    "ema": None,  # the decay of a moving average of the weights, evaluated and kept
    "device": "cpu",
    "dtype": "float32",
    "layers": None,  # None: the model builder's default
    "hidden": None,
    "model_args": {},
    "progress": True,
    "tensorboard": None,
    "plots": True,
}

# Defaults that depend on the data; a config file or flag overrides them.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": {"layers": 8, "hidden": [64, 64]},
    "digits": {
        "epochs": 300,
        "batch_size": 128,
        "layers": 8,
        "hidden": [256, 256],
        "model_args": {"actnorm": True},
    },
    "mnist": {"epochs": 1500, "batch_size": 256, "schedule": None, "patience": None},
    "cifar10": {"epochs": 100, "batch_size": 64, "clip": 50.0},
    # Data files (.npz / .npy / .csv): tabular data of a few to a few dozen columns, often
    # with features of different scales (ActNorm, where the model takes it, standardises
    # them) and of modest size (early stopping after 20 epochs without a better validation
    # NLL guards against overfitting; the best epoch's weights are kept).
    "tabular": {
        "epochs": 200,
        "layers": 8,
        "hidden": [128, 128],
        "patience": 20,
        "model_args": {"actnorm": True},
    },
}

# Defaults for one model on one kind of data, applied after DATA_DEFAULTS. The image flows'
# builder defaults are the papers' (Glow: 3 levels of 32 steps of 512 channels); these are
# sizes that train in minutes (digits) or about an hour (MNIST) on a 2-core CPU.
MODEL_DATA_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("digits", "realnvp_image"): {"model_args": {"scales": 2, "blocks": 1, "channels": 32}},
    ("digits", "glow"): {"model_args": {"levels": 2, "steps": 8, "channels": 64}},
    ("mnist", "glow"): {
        "epochs": 15,
        "batch_size": 64,
        "schedule": "cosine",
        "clip": 50.0,
        "model_args": {"levels": 2, "steps": 8, "channels": 64, "shift_bound": 5.0},
    },
    # the NICE paper's Adam: "momentum 0.9, beta2 0.01" in the early notation in which beta2
    # is one minus torch's, and epsilon 1e-4
    ("mnist", "nice"): {"adam_betas": [0.9, 0.99], "adam_eps": 1e-4},
    ("mnist", "realnvp_image"): {
        "epochs": 10,
        "batch_size": 64,
        "schedule": "cosine",
        "clip": 50.0,
        "model_args": {"scales": 3, "blocks": 1, "channels": 32},
    },
}


# Options of `flowforge vi` (variational inference).
VI_DEFAULTS: dict[str, Any] = {
    "target": "u1",  # a name in ff.targets, or "module:function" returning log p~(z)
    "dim": None,  # needed for a module:function target
    "model": "planar",
    "base": "diag-normal",
    "layers": None,
    "hidden": None,
    "model_args": {},
    "seed": 0,
    "steps": 10_000,
    "batch_size": 1000,
    "lr": 1e-3,
    "anneal": None,  # steps of annealing the target from beta = 0.01 to 1
    "schedule": "cosine",
    "clip": None,
    "device": "cpu",
    "dtype": "float32",
    "progress": True,
    "plots": True,
}


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


def finite_number(value: Any) -> float | None:
    """A finite float from a number or a numeric string (YAML reads ``1e-3`` as a string),
    else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
        return None
    return number if math.isfinite(number) else None


def _number_or_text(value: Any) -> Any:
    """A string that spells a finite number as that number (YAML 1.1 leaves ``1e-3`` a
    string), anything else as it is."""
    number = finite_number(value) if isinstance(value, str) else None
    return value if number is None else number


def _columns(value: Any) -> bool:
    """A column spec: ``"0,1"``, ``"age,height"``, an index, or a non-empty list of them."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):
        return bool(value) and all(not isinstance(v, list) and _columns(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


_POSITIVE_INT = Option(options.integer(1), nullable=True)
_PATH = Option(options.text("a directory path"), nullable=True)
_UNIT = options.number(0.0, below=1.0, what="a number in [0, 1)")

# The schema of every config key (and flag) of `flowforge fit`: the training options of
# `flowforge.training.options` under the same names, and the run's own (`VI_SCHEMA` below
# for `flowforge vi`).
SCHEMA: dict[str, Option] = {
    **training_options.FIT,
    **{k: v for k, v in training_options.VARIATIONAL.items() if k not in training_options.FIT},
    "seed": training_options.SEED,
    "data": Option(
        options.text("a dataset name (see flowforge list) or a .npz, .npy or .csv file")
    ),
    "model": Option(options.text("a model name (see flowforge list)")),
    "n": _POSITIVE_INT,
    "data_dir": _PATH,
    "context_columns": Option(
        options.custom('column indices or header names such as "0,1" or [0, 1]', _columns),
        nullable=True,
    ),
    "objective": Option(options.choice("likelihood", "flow-matching")),
    "coupling": training_options.FLOW_MATCHING["coupling"],
    "coupling_reg": training_options.FLOW_MATCHING["reg"],
    "sigma_min": training_options.FLOW_MATCHING["sigma_min"],
    "adam_betas": Option(
        options.listed(_UNIT, "two numbers in [0, 1) such as [0.9, 0.99]", length=2),
        nullable=True,
    ),
    "adam_eps": Option(training_options.POSITIVE.kind, nullable=True),
    "device": Option(options.text("a torch device such as cpu or cuda")),
    "dtype": Option(options.choice("float32", "float64")),
    "layers": _POSITIVE_INT,
    "hidden": Option(
        options.listed(options.integer(1), "a list of positive widths such as [64, 64]"),
        nullable=True,
    ),
    "model_args": Option(options.mapping("a mapping of extra model arguments")),
    "tensorboard": Option(options.text("a log directory"), nullable=True),
    "plots": Option(options.BOOLEAN),
    "target": Option(options.text("a target name (see flowforge list) or module:function")),
    "dim": _POSITIVE_INT,
    "base": Option(options.text("a base name: normal, logistic or diag-normal")),
}


# `flowforge vi`'s keys: the same, with fit_variational's schedule (cosine or null)
VI_SCHEMA: dict[str, Option] = {**SCHEMA, "schedule": training_options.VARIATIONAL["schedule"]}


def checked(key: str, value: Any, schema: Mapping[str, Option] = SCHEMA) -> Any:
    """The value of config key ``key`` in its normal form (a string that spells a number or
    a list, as YAML leaves ``1e-3``, read as one); else one `ConfigError` line."""
    option = schema[key]
    if option.accepts(value):
        return None if value is None else option.kind.normal(value)
    if isinstance(value, list):  # [0.9, "1e-3"]
        numbers = [_number_or_text(v) for v in value]
        if option.accepts(numbers):
            return option.kind.normal(numbers)
    if isinstance(value, str):
        try:
            return option.read(value)
        except ValueError:
            pass
    raise ConfigError(f"config value {key!r} must be {option.expected('yaml')}, got {value!r}")


MAX_YAML_VALUES = 1_000_000  # values in a config file, counting each use of a YAML alias


def _count_values(content: Any, path: Path) -> None:
    """Refuse a YAML document whose values, with aliases expanded, number more than
    `MAX_YAML_VALUES` (a "billion laughs" file), or that contains itself."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in pending:
            raise ConfigError(f"config file {path} refers to itself (a recursive YAML alias)")
        pending.add(key)
        items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_YAML_VALUES:
                raise ConfigError(
                    f"config file {path} holds more than {MAX_YAML_VALUES:,} values (with its "
                    "aliases expanded); a config file needs a few dozen"
                )
        pending.discard(key)
        sizes[key] = total
        return total

    size(content)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, read with ``yaml.safe_load`` (no Python objects).

    Refused with one `ConfigError` line naming the file: a missing file; one that is
    not a regular file (a FIFO, device or directory: checked before opening it, as opening a
    FIFO blocks); over `flowforge.runtime.files.MAX_TEXT_BYTES`; not UTF-8; not valid YAML or
    nested too deeply; more than `MAX_YAML_VALUES` values with aliases expanded; not
    a mapping, or a mapping whose keys are not all strings."""
    from flowforge.runtime.files import read_text

    path = Path(path)
    try:
        text = read_text(path, what=f"config file {path}")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        content = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except (yaml.YAMLError, ValueError, OverflowError) as error:  # ValueError: 2001-02-30
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {reason[:300]}") from None
    if content is None:
        return {}
    try:
        _count_values(content, path)  # before anything is shown or copied
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if not isinstance(content, dict):
        shown = repr(content) if len(repr(content)) <= 80 else repr(content)[:77] + "..."
        raise ConfigError(f"config file {path} must hold a mapping of options, got {shown}")
    bad = next((key for key in content if not isinstance(key, str)), None)
    if bad is not None:
        raise ConfigError(f"config file {path}: option names must be strings, got {bad!r}")
    return content


def resolve(
    file_values: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_kind: Callable[[str], str] = lambda name: name,
    defaults: Mapping[str, Any] = DEFAULTS,
    schema: Mapping[str, Option] = SCHEMA,
) -> dict[str, Any]:
    """Merge ``defaults`` (`DEFAULTS` for fitting data, `VI_DEFAULTS` for
    variational inference), the data's defaults, a config file's values and flag overrides,
    and check every value. ``data_kind`` maps a dataset name to its key in
    `DATA_DEFAULTS`."""
    given = {**(file_values or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; expected one of {', '.join(sorted(defaults))}"
        )
    config = dict(defaults)
    if "data" in defaults:
        kind = data_kind(str(given.get("data", defaults["data"])))
        config.update(DATA_DEFAULTS.get(kind, {}))
        config.update(MODEL_DATA_DEFAULTS.get((kind, str(given.get("model", config["model"]))), {}))
    config.update(given)
    return {key: checked(key, value, schema) for key, value in config.items()}


def write_yaml(config: Mapping[str, Any], path: Path) -> None:
    """Write ``config`` as YAML to ``path``, atomically and durably (`flowforge.runtime.atomic`)."""
    from flowforge.runtime import atomic

    atomic.write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
