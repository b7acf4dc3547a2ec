"""One schema for the options (flowforge.runtime.options, flowforge.training.options): a
value is taken or refused alike, with the same words, by ``ff.fit``'s keyword, the YAML
config key and the command-line flag."""

from __future__ import annotations

import argparse
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowforge as ff
from flowforge import cli
from flowforge.runs import config
from flowforge.runtime.options import Option, choice, integer, listed, number
from flowforge.training import options

# fit's keywords whose values are objects, checked where they are used
OBJECTS = {
    "flow",
    "train",
    "val",
    "objective",
    "optimizer",
    "scheduler",
    "checkpoint",
    "metrics",
    "tensorboard",
    "device",
    "dtype",
    "distributed",
    "callback",
    "callbacks",
}
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 300), st.floats(-2, 2)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
# values that some option refuses, tried on every layer
PROBES = [0, -1, 1.5, 2, "x", None, True, float("nan"), [0.5], 2**63]


def test_the_schema_covers_every_plain_keyword_of_fit_and_fit_variational():
    for function, schema in ((ff.fit, options.FIT), (ff.fit_variational, options.VARIATIONAL)):
        plain = set(inspect.signature(function).parameters) - OBJECTS - {"target", "beta0"}
        assert plain == set(schema), function.__name__


def test_every_config_key_has_an_option():
    assert set(config.DEFAULTS) | set(config.VI_DEFAULTS) <= set(config.SCHEMA)
    for key in set(config.DEFAULTS) & set(options.FIT):
        assert config.SCHEMA[key] is options.FIT[key] or key == "seed", key


def _flags(command: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def test_every_flag_of_a_config_key_is_read_by_its_option():
    for command, defaults in (("fit", config.DEFAULTS), ("vi", config.VI_DEFAULTS)):
        for dest, action in _flags(command).items():
            if dest in defaults and dest != "model_args" and action.const is None:
                assert action.type is not None and action.choices is None, (command, dest)


def _fit_error(key: str, value) -> str | None:
    flow = ff.models.realnvp(2, layers=2, hidden=(4,))
    try:
        ff.fit(flow, torch.randn(8, 2), **{"epochs": 1, "progress": False, key: value})
    except ValueError as error:
        return str(error)
    return None


def _config_error(key: str, value) -> str | None:
    try:
        config.resolve({key: value})
    except config.ConfigError as error:
        return str(error)
    return None


def _flag_error(key: str, text: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fit", "--out", "o", f"--{key.replace('_', '-')}={text}"])
    return capsys.readouterr().err


def _has_flag(key: str) -> bool:
    action = _flags("fit").get(key)
    return action is not None and action.type is not None


@pytest.mark.parametrize("key", sorted(set(options.FIT) & set(config.DEFAULTS)))
def test_a_bad_value_gets_the_same_words_from_fit_the_config_and_the_flag(key, capsys):
    option = options.FIT[key]
    refused = [v for v in PROBES if not option.accepts(v) and not (key == "seed" and v is None)]
    assert refused, "a probe that the option refuses"
    for value in refused:
        expected = option.expected("python")
        assert _fit_error(key, value) == f"{key} must be {expected}, got {value!r}"
        assert _config_error(key, value) == (
            f"config value {key!r} must be {config.SCHEMA[key].expected('yaml')}, got {value!r}"
        )
        if _has_flag(key) and isinstance(value, str | int | float) and not isinstance(value, bool):
            err = _flag_error(key, str(value), capsys)
            assert f"expected {option.kind.expected('yaml')}, got {str(value)!r}" in err


@pytest.mark.parametrize("key", sorted(set(options.FIT) & set(config.DEFAULTS)))
def test_a_good_value_is_taken_by_the_config_and_the_flag(key):
    option = options.FIT[key]
    candidates = [*PROBES, 1e-3, 0.5, 3, "auto", "cosine", "bf16", False]
    accepted = [v for v in candidates if option.accepts(v) and config.SCHEMA[key].accepts(v)]
    for value in accepted:
        assert config.resolve({key: value})[key] == value
        if value is not None and _has_flag(key):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flag = f"--{key.replace('_', '-')}={text}"
            assert getattr(cli.build_parser().parse_args(["fit", "--out", "o", flag]), key) == value


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(config.SCHEMA)), value=VALUES)
def test_any_value_is_taken_in_normal_form_or_refused_in_one_line(key, value):
    option = config.SCHEMA[key]
    try:
        normal = option.check(key, value)
    except ValueError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(f"{key} must be ")
        assert not option.accepts(value)
        return
    assert option.accepts(value) and option.accepts(normal)
    assert option.check(key, normal) == normal  # the normal form is a fixed point


@given(value=st.floats(min_value=1e-300, max_value=1e300))
def test_a_number_reads_back_from_its_text(value):
    assert options.FIT["lr"].read(repr(value)) == value
    assert options.FIT["lr"].read(str(value)) == value


@pytest.mark.parametrize(
    "option, text, expected",
    [
        (Option(integer(1)), "0", "expected a positive integer, got '0'"),
        (Option(integer(1)), "1.5", "expected a positive integer, got '1.5'"),
        (Option(number(0.0, strict=True)), "nan", "expected a positive number, got 'nan'"),
        (Option(number(0.0)), "-inf", "expected a finite number >= 0, got '-inf'"),
        (Option(choice("auto", True, False, spelled={"true": True})), "yes", "expected auto"),
        (Option(listed(integer(1), "widths", length=2)), "64", "expected widths, got '64'"),
        (Option(listed(integer(1), "widths")), "64,,64", "expected widths"),
    ],
)
def test_a_text_that_does_not_spell_a_value_is_refused(option, text, expected):
    with pytest.raises(ValueError, match=expected):
        option.read(text)


def test_booleans_are_not_numbers_and_numbers_are_not_booleans():
    assert not options.FIT["epochs"].accepts(True)
    assert not options.FIT["lr"].accepts(True)
    assert not options.FIT["compile"].accepts(1)
    assert options.FIT["compile"].accepts(True) and options.FIT["compile"].accepts("auto")
    assert not options.FIT["progress"].accepts(0)
    assert not options.FIT["lr"].accepts(10**400)  # beyond float's range: refused, not raised


def test_the_variational_schedule_is_cosine_or_none_everywhere(capsys):
    with pytest.raises(ValueError, match="schedule must be 'cosine' or None, got 'plateau'"):
        ff.fit_variational(ff.models.planar(2, layers=1), ff.targets.get("u1"), schedule="plateau")
    with pytest.raises(config.ConfigError, match="must be cosine or null, got 'plateau'"):
        config.resolve(
            {"schedule": "plateau"}, defaults=config.VI_DEFAULTS, schema=config.VI_SCHEMA
        )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["vi", "--out", "o", "--schedule", "plateau"])
    assert "expected cosine, got 'plateau'" in capsys.readouterr().err


def test_yaml_strings_that_spell_values_are_read():
    resolved = config.resolve({"lr": "1e-3", "epochs": "5", "hidden": "64,64", "compile": "false"})
    assert resolved["lr"] == 1e-3 and resolved["epochs"] == 5
    assert resolved["hidden"] == [64, 64] and resolved["compile"] is False
    assert isinstance(config.resolve({"lr": 1})["lr"], float)
    assert math.isclose(config.resolve({"adam_betas": [0, "0.99"]})["adam_betas"][1], 0.99)
