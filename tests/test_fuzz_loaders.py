"""Fuzzers of everything that reads a file or a description from elsewhere: whatever the
bytes or values, the only errors are a ``ValueError`` (``ConfigError`` and ``BudgetError``
are ones), ``TypeError`` or ``FileNotFoundError`` whose message is one non-empty line.

Bounded in time: the default profile (tests/conftest.py) runs 150 to 240 examples a fuzzer,
about 10 s in all on 2 cores; ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many.
"""

from __future__ import annotations

import functools
import inspect
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowforge
from flowforge import datasets, runs
from flowforge.flows import io, models
from flowforge.runs.config import DEFAULTS, VI_DEFAULTS, read_yaml, resolve

ALLOWED = (ValueError, TypeError, FileNotFoundError)
SCALE = settings.default.max_examples  # 6 by default, 60 with HYPOTHESIS_PROFILE=thorough


def fuzz(times: int) -> settings:
    """Settings of a fuzzer that runs ``times`` x the profile's examples."""
    return settings(
        max_examples=times * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check(call):
    """``call()``'s value, or the allowed error it raised, checked to be one line."""
    try:
        return call()
    except ALLOWED as error:
        message = str(error)
        assert message.strip() and "\n" not in message, repr(message)
        return error


def flipped(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with the bits ``(position, bit)`` flipped (positions modulo its length), then
    cut at ``cut`` (modulo its length + 1) if given."""
    data = bytearray(data)
    for position, bit in flips:
        if data:
            data[position % len(data)] ^= 1 << bit
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


FLIPS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 7)), max_size=6)
CUTS = st.none() | st.integers(0, 2**20)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)  # too large for a float
    | st.floats()
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)

# ------------------------------------------------------------------------ config files

YAML_TEXT = st.text(
    alphabet=st.sampled_from(list("abcdlr_:-[]{},&*!?|>'\"#%@` \n\t0123456789.e+~")),
    max_size=160,
)
CONFIG_KEYS = st.sampled_from(sorted({*DEFAULTS, *VI_DEFAULTS})) | st.text(max_size=8)
MAPPINGS = st.dictionaries(CONFIG_KEYS, VALUES, max_size=6)


def valid_yaml(mapping: dict) -> str:
    return yaml.safe_dump({"data": "two-moons", "epochs": 3, "hidden": [8, 8], **mapping})


@fuzz(30)
@given(
    text=YAML_TEXT
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
    | MAPPINGS.map(valid_yaml)
    | st.builds(
        lambda mapping, flips, cut: flipped(valid_yaml(mapping).encode(), flips, cut),
        MAPPINGS,
        FLIPS,
        CUTS,
    )
    | st.binary(max_size=200)
)
def test_fuzz_config_files(text):
    """config.read_yaml and config.resolve over random and corrupted YAML files."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        content = check(lambda: read_yaml(path))
    if isinstance(content, dict):
        check(lambda: resolve(content, None, runs.data_kind))
        check(lambda: resolve(content, None, defaults=VI_DEFAULTS))


@fuzz(30)
@given(values=MAPPINGS, overrides=MAPPINGS)
def test_fuzz_config_mappings(values, overrides):
    """config.resolve over random mappings of options (from a file and from flags)."""
    check(lambda: resolve(values, overrides, runs.data_kind))
    check(lambda: resolve(values, overrides, defaults=VI_DEFAULTS))


# ------------------------------------------------------------------------ data files


def valid_data_file(kind: str, rows: int, columns: int) -> tuple[str, bytes]:
    """The bytes of a valid data file of ``rows`` x ``columns`` numbers, and its suffix."""
    x = np.random.default_rng(rows * 31 + columns).normal(size=(rows, columns))
    buffer = __import__("io").BytesIO()
    if kind == "npy":
        np.save(buffer, x)
    elif kind == "npz":
        np.savez(buffer, x=x, context=x[:, :1])
    elif kind == "npz-compressed":
        np.savez_compressed(buffer, x=x)
    else:
        buffer.write(("a,b,c\n" if columns == 3 else "").encode())
        np.savetxt(buffer, x, delimiter=",")
    suffix = {"npy": ".npy", "npz": ".npz", "npz-compressed": ".npz"}.get(kind, ".csv")
    return suffix, buffer.getvalue()


def load_data_file(suffix: str, data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(data)
        return check(lambda: datasets.load(str(path)))


@fuzz(30)
@given(
    kind=st.sampled_from(["npy", "npz", "npz-compressed", "csv"]),
    rows=st.integers(0, 30),
    columns=st.integers(1, 4),
    flips=FLIPS,
    cut=CUTS,
)
def test_fuzz_corrupted_data_files(kind, rows, columns, flips, cut):
    """flowforge.datasets.load over bit-flipped and truncated .npy, .npz and .csv files."""
    suffix, data = valid_data_file(kind, rows, columns)
    load_data_file(suffix, flipped(data, flips, cut))


@fuzz(25)
@given(
    suffix=st.sampled_from([".npy", ".npz", ".csv"]),
    data=st.binary(max_size=400)
    | st.text(alphabet=st.sampled_from(list('0123456789.,-e+#\n nainfNAaxy"')), max_size=300).map(
        str.encode
    ),
)
def test_fuzz_random_data_files(suffix, data):
    """flowforge.datasets.load over random bytes and random CSV-like text."""
    load_data_file(suffix, data)


# ------------------------------------------------------------------------ model builders

ARGUMENT_NAMES = sorted(
    {name for builder in models.MODELS.values() for name in inspect.signature(builder).parameters}
)
NAMES = st.sampled_from(sorted(models.MODELS)) | st.text(max_size=8)
ARGUMENTS = st.dictionaries(
    st.sampled_from(ARGUMENT_NAMES) | st.text(max_size=6),
    VALUES | st.lists(st.integers(-2, 40), min_size=1, max_size=4),
    max_size=6,
)


# A small valid configuration of each builder, for mutants that get past the first check.
SMALL = {
    "realnvp": {"dim": 3, "layers": 2, "hidden": [8]},
    "nice": {"dim": 4, "layers": 2, "hidden": [8]},
    "maf": {"dim": 3, "layers": 2, "hidden": [8], "permutation": "random"},
    "iaf": {"dim": 3, "layers": 2, "hidden": [8]},
    "nsf": {"dim": 3, "layers": 2, "hidden": [8]},
    "planar": {"dim": 2, "layers": 2},
    "radial": {"dim": 2, "layers": 2},
    "realnvp_image": {"shape": [1, 4, 4], "scales": 2, "blocks": 1, "channels": 4},
    "glow": {"shape": [1, 4, 4], "levels": 1, "steps": 2, "channels": 4},
}


@st.composite
def mutated_configs(draw) -> dict:
    """A small valid config of a builder with up to three arguments replaced by random
    values (integers often small or just above a limit)."""
    name = draw(st.sampled_from(sorted(models.MODELS)))
    config = {"model": name, **SMALL.get(name, {"dim": 3})}
    parameters = sorted(inspect.signature(models.MODELS[name]).parameters)
    limits = sorted(models.STRUCTURE_LIMITS.values())
    values = VALUES | st.sampled_from(limits).map(lambda v: v + 1) | st.integers(0, 600)
    values = values | st.lists(st.integers(-1, 600) | st.sampled_from(limits), max_size=4)
    for _ in range(draw(st.integers(1, 3))):
        config[draw(st.sampled_from(parameters))] = draw(values)
    return config


@fuzz(40)
@given(
    config=st.builds(lambda name, arguments: {"model": name, **arguments}, NAMES, ARGUMENTS)
    | mutated_configs()
)
def test_fuzz_model_builders(config):
    """models.build over random names and arguments of random types and sizes, and over
    valid small configs with random arguments (a budget of 10^5 parameters keeps each
    example small)."""
    check(lambda: models.build(config, max_parameters=10**5))


# ------------------------------------------------------------------------ run directories


@functools.cache
def template() -> Path:
    """A saved tiny Real NVP (made once, in a directory that outlives the module's tests)."""
    directory = Path(tempfile.mkdtemp(prefix="flowforge-fuzz-")) / "run"
    torch.manual_seed(0)
    flowforge.save(models.realnvp(dim=2, layers=2, hidden=(8,)), directory)
    return directory


@pytest.fixture(scope="module", autouse=True)
def _remove_template():
    yield
    if template.cache_info().currsize:
        shutil.rmtree(template().parent, ignore_errors=True)


def load_run(changes: dict[str, bytes]) -> object:
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        shutil.copytree(template(), run)
        for name, data in changes.items():
            (run / name).write_bytes(data)
        return check(lambda: flowforge.load(run, max_parameters=10**5))


@fuzz(30)
@given(
    name=st.sampled_from([io.MODEL_JSON, io.MODEL_WEIGHTS]),
    flips=FLIPS,
    cut=CUTS,
    random=st.none() | st.binary(max_size=300),
)
def test_fuzz_corrupted_run_directories(name, flips, cut, random):
    """flowforge.load of a saved flow whose model.json or model.safetensors is bit-flipped,
    truncated or replaced by random bytes."""
    data = (template() / name).read_bytes() if random is None else random
    load_run({name: flipped(data, flips, cut)})


DESCRIPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "format": st.just(io.FORMAT) | VALUES,
        "dtype": st.sampled_from(["float32", "float64", "int8", "bfloat16"]) | VALUES,
        "config": st.builds(lambda name, arguments: {"model": name, **arguments}, NAMES, ARGUMENTS)
        | VALUES,
        "flowforge": VALUES,
    },
)


@fuzz(30)
@given(description=DESCRIPTIONS | VALUES)
def test_fuzz_model_descriptions(description):
    """flowforge.load of random model.json descriptions (random formats, dtypes and configs)
    beside the tiny flow's weights."""
    load_run({io.MODEL_JSON: json.dumps(description).encode()})
