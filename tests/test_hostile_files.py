"""Hostile run directories and data files: one clear line, never a traceback, a hang or a huge
allocation.

One test per finding of an audit of crafted run directories: model sizes are checked before
anything is allocated (:func:`test_budget_refuses_huge_descriptions_before_allocating`), only
regular files are read (:func:`test_only_regular_files_are_read`), every malformed file is
one line through the API and the command line (:func:`test_crafted_run_directory`, a table
of crafted directories made from a tiny saved model), and every file io.py and
``config.write_yaml`` write is atomic and durable
(:func:`test_writes_are_atomic_and_durable`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import flowforge
from flowforge import runs
from flowforge.cli import main
from flowforge.flows import io, models
from flowforge.runs.config import ConfigError, read_yaml, write_yaml
from flowforge.runtime.limits import BudgetError

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


class Hang(BaseException):
    """A call blocked (on a FIFO, say); a BaseException so that no ``except`` swallows it."""


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test whose call blocks instead of refusing, rather than hang the suite."""

    def alarm(signum, frame):
        raise Hang("the call blocked for 20 s (did it open a FIFO?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------ a tiny saved run

TINY = {
    "data": "two-moons",
    "n": 600,
    "epochs": 1,
    "layers": 2,
    "hidden": [8],
    "progress": False,
    "plots": False,
}
METRICS = {"epoch": 1, "train_nll": 2.5, "val_nll": 2.4, "lr": 1e-3, "seconds": 0.1}


def tiny_flow(**changes) -> flowforge.Flow:
    torch.manual_seed(0)
    return models.realnvp(**{"dim": 2, "layers": 2, "hidden": (8,), **changes})


def write_run(run: Path) -> Path:
    """A run directory as ``flowforge fit`` leaves it (without a checkpoint): config.yaml,
    model.json, model.safetensors and metrics.jsonl of a tiny Real NVP on two moons."""
    run.mkdir(parents=True)
    config = runs.make_config(None, TINY)
    write_yaml({k: v for k, v in config.items() if not k.startswith("_")}, run / "config.yaml")
    flowforge.save(tiny_flow(), run)
    (run / "metrics.jsonl").write_text(json.dumps(METRICS) + "\n")
    return run


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run(template, tmp_path) -> Path:
    """A fresh copy of the template run, in its own directory (its parent is "outside")."""
    copy = tmp_path / "run"
    shutil.copytree(template, copy)
    return copy


def test_the_template_run_loads_evaluates_and_plots(run, capsys):
    flow = flowforge.load(run)
    assert flow.config["hidden"] == [8]
    assert runs.evaluate_run(run)["flow"]["n"] == 60
    assert runs.read_history(run) == [METRICS]
    assert main(["eval", str(run)]) == 0


# ------------------------------------------------------------------------ corruptions


def description(run: Path) -> dict:
    return json.loads((run / "model.json").read_text())


def put_description(run: Path, content: object) -> None:
    (run / "model.json").write_text(json.dumps(content))


def with_config(**changes) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        content = description(run)
        content["config"].update(changes)
        put_description(run, content)

    return corrupt


def without_config(key: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        content = description(run)
        del content["config"][key]
        put_description(run, content)

    return corrupt


def with_top(key: str, value: object = ...) -> Callable[[Path], None]:
    """Set (or, with no value, delete) a top-level key of model.json."""

    def corrupt(run: Path) -> None:
        content = description(run)
        if value is ...:
            del content[key]
        else:
            content[key] = value
        put_description(run, content)

    return corrupt


def text(name: str, content: str | bytes) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        path = run / name
        path.unlink(missing_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return corrupt


def transform_bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        path = run / name
        path.write_bytes(change(path.read_bytes()))

    return corrupt


def remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def fifo(name: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return corrupt


def directory(name: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()
        (run / name / "inner").write_text("{}")

    return corrupt


def link_outside(name: str) -> Callable[[Path], None]:
    """Move the (valid) file out of the run directory and link to it there."""

    def corrupt(run: Path) -> None:
        outside = run.parent / f"outside-{name}"
        (run / name).rename(outside)
        (run / name).symlink_to(outside)

    return corrupt


def link_to(name: str, target: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(target)

    return corrupt


def weights(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        tensors = load_file(str(run / "model.safetensors"))
        save_file(change(tensors), str(run / "model.safetensors"))

    return corrupt


def weights_of(flow: flowforge.Flow) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        state = {k: v.contiguous() for k, v in flow.state_dict().items()}
        save_file(state, str(run / "model.safetensors"))

    return corrupt


FIRST = "transform.transforms.0.conditioner.0.weight"  # the first coupling's first, (8, 1)


def drop_first(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if k != FIRST}


def config_yaml(**changes) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        content = read_yaml(run / "config.yaml")
        content.update(changes)
        write_yaml(content, run / "config.yaml")

    return corrupt


def metrics(content: str) -> Callable[[Path], None]:
    return text("metrics.jsonl", content)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


MAF_HUGE_SEED = {"model": "maf", "dim": 2, "layers": 2, "permutation": "random", "seed": 10**30}


@dataclass
class Case:
    id: str
    corrupt: Callable[[Path], None]
    needle: str  # a part of the one-line message
    # what is corrupted: "model" (model.json, model.safetensors), "dir" (the run directory),
    # "config" (config.yaml), "use" (a config.yaml that reads but cannot be used: its device
    # or data file), "metrics" (metrics.jsonl)
    where: str = "model"


def skip_with_cuda(case: Case):
    return pytest.param(
        case,
        id=case.id,
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    )


CASES = [
    # --- model.json: files ---
    Case("model.json missing", remove("model.json"), "missing model.json"),
    Case("weights missing", remove("model.safetensors"), "missing model.safetensors"),
    Case("model.json a FIFO", fifo("model.json"), "FIFO"),
    Case("model.json a directory", directory("model.json"), "is a directory"),
    Case("model.json links outside", link_outside("model.json"), "outside"),
    Case("model.json links to /dev/zero", link_to("model.json", "/dev/zero"), "outside"),
    Case("model.json broken link", link_to("model.json", "nowhere.json"), "broken or looping"),
    Case("model.json link loop", link_to("model.json", "model.json"), "broken or looping"),
    Case("model.json too large", text("model.json", " " * (5 * 2**20) + "{}"), "above the limit"),
    # --- model.json: content ---
    Case("model.json empty", text("model.json", ""), "not valid JSON"),
    Case("model.json truncated", transform_bytes("model.json", lambda b: b[:40]), "not valid JSON"),
    Case("model.json binary", text("model.json", b"\xff\xfe\x00garbage\x81"), "not UTF-8"),
    Case("model.json nested deeply", text("model.json", "[" * 200_000), "nested too deeply"),
    Case("model.json huge integer", text("model.json", "9" * 5000), "not valid JSON"),
    Case("model.json an array", text("model.json", "[1, 2]"), "holds an array"),
    Case("model.json a string", text("model.json", '"realnvp"'), "holds a string"),
    Case("model.json null", text("model.json", "null"), "holds null"),
    Case("format missing", with_top("format"), "format is None"),
    Case("format wrong", with_top("format", "flowforge-model/9"), "format is 'flowforge-model/9'"),
    Case("format a list", with_top("format", ["flowforge-model/1"]), "format is"),
    Case("dtype int64", with_top("dtype", "int64"), "not a floating-point dtype"),
    Case("dtype an attribute", with_top("dtype", "__class__"), "not a floating-point dtype"),
    Case("dtype a number", with_top("dtype", 32), "not a floating-point dtype"),
    Case("dtype a list", with_top("dtype", ["float32"]), "not a floating-point dtype"),
    Case("config missing", with_top("config"), "config must be an object"),
    Case("config a list", with_top("config", ["realnvp", 2]), "got an array"),
    Case("config a string", with_top("config", "realnvp"), "got a string"),
    Case("model name missing", without_config("model"), "config names the model None"),
    Case("model name unknown", with_config(model="realnvp9"), "config names the model 'realnvp9'"),
    Case("model name a number", with_config(model=7), "config names the model 7"),
    Case("dim a string", with_config(dim="2"), "dim must be an integer >= 2, got '2'"),
    Case("dim missing", without_config("dim"), "missing a required argument: 'dim'"),
    Case("layers a string", with_config(layers="2"), "layers must be an integer >= 1"),
    Case("layers a float", with_config(layers=2.5), "layers must be an integer >= 1"),
    Case("layers zero", with_config(layers=0), "layers must be an integer >= 1, got 0"),
    Case("layers negative", with_config(layers=-4), "layers must be an integer >= 1, got -4"),
    Case("hidden a dict", with_config(hidden={"a": 1}), "config value 'hidden' is an object"),
    Case("hidden nested", with_config(hidden=[[8]]), "'hidden' is an array with a nested"),
    Case("hidden empty", with_config(hidden=[]), "hidden must be a non-empty sequence"),
    Case("hidden strings", with_config(hidden=["8"]), "hidden must be a non-empty sequence"),
    Case("mask unknown", with_config(mask="zigzag"), "unknown mask 'zigzag'"),
    Case("activation garbage", with_config(activation={"x": [1, {"y": None}]}), "is an object"),
    Case("unknown argument", with_config(colour="blue"), "unexpected keyword argument 'colour'"),
    Case("scale_bound NaN", with_config(scale_bound=float("nan")), "non-finite number nan"),
    Case("seed too large", with_top("config", MAF_HUGE_SEED), "Overflow"),
    # --- model.json: sizes (refused before anything is allocated) ---
    Case("layers 10,000,000", with_config(layers=10**7), "STRUCTURE_LIMITS['layers']"),
    Case("hidden 2 x 20,000, 64 layers", with_config(hidden=[20000] * 2, layers=64), "25,606,"),
    Case("dim 1,000,000,000", with_config(dim=10**9), "STRUCTURE_LIMITS['dim']"),
    Case("dim 1e9 (a float)", with_config(dim=1e9), "dim must be an integer >= 2"),
    Case("hidden width 10**6", with_config(hidden=[10**6]), "STRUCTURE_LIMITS['width']"),
    Case("hidden 1000 deep", with_config(hidden=[8] * 1000), "STRUCTURE_LIMITS['depth']"),
    # --- model.safetensors ---
    Case("weights a FIFO", fifo("model.safetensors"), "FIFO"),
    Case("weights a directory", directory("model.safetensors"), "is a directory"),
    Case("weights link outside", link_outside("model.safetensors"), "outside"),
    Case("weights empty", text("model.safetensors", b""), "not a readable safetensors file"),
    Case(
        "weights truncated",
        transform_bytes("model.safetensors", lambda b: b[: len(b) // 2]),
        "not a readable safetensors file",
    ),
    Case(
        "weights header cut",
        transform_bytes("model.safetensors", lambda b: b[:20]),
        "not a readable safetensors file",
    ),
    Case(
        "weights garbage",
        text("model.safetensors", bytes(range(256)) * 8),
        "not a readable safetensors file",
    ),
    Case(
        "weights header length huge",
        transform_bytes("model.safetensors", lambda b: (2**62).to_bytes(8, "little") + b[8:]),
        "not a readable safetensors file",
    ),
    Case(
        "weights header not JSON",
        transform_bytes("model.safetensors", lambda b: b[:8] + b"!" + b[9:]),
        "not a readable safetensors file",
    ),
    Case(
        "weight of the wrong shape",
        weights(lambda t: {**t, FIRST: torch.zeros(3, 4)}),
        f"tensor '{FIRST}' has shape (3, 4) but the model of model.json expects (8, 1)",
    ),
    Case(
        "weight a scalar",
        weights(lambda t: {**t, FIRST: torch.tensor(1.0)}),
        "has shape () but",
    ),
    Case(
        "weight float64",
        weights(lambda t: {**t, FIRST: t[FIRST].double()}),
        f"tensor '{FIRST}' has dtype F64 but the model of model.json expects F32",
    ),
    Case(
        "weight integer",
        weights(lambda t: {**t, FIRST: t[FIRST].long()}),
        "has dtype I64",
    ),
    Case("weight missing", weights(drop_first), f"lacks tensor '{FIRST}'"),
    Case(
        "weight unexpected",
        weights(lambda t: {**t, "extra.weight": torch.zeros(2)}),
        "has unexpected tensor 'extra.weight'",
    ),
    Case("weights of a wider model", weights_of(tiny_flow(hidden=(16,))), "has shape (16, 1)"),
    Case("weights of another model", weights_of(models.maf(dim=2, layers=1)), "lacks tensor"),
    Case("dtype float64, weights float32", with_top("dtype", "float64"), "expects F64"),
    # --- config.yaml ---
    Case("config.yaml missing", remove("config.yaml"), "config.yaml is missing", "config"),
    Case("config.yaml a FIFO", fifo("config.yaml"), "FIFO", "config"),
    Case("config.yaml a directory", directory("config.yaml"), "is a directory", "config"),
    Case("config.yaml links outside", link_outside("config.yaml"), "outside", "config"),
    Case("config.yaml invalid YAML", text("config.yaml", "data: [\n"), "not valid YAML", "config"),
    Case("config.yaml a list", text("config.yaml", "- a\n- b\n"), "must hold a mapping", "config"),
    Case("config.yaml binary", text("config.yaml", b"\xff\xfe\x00\x81"), "not UTF-8", "config"),
    Case(
        "config.yaml too large",
        text("config.yaml", "#" * (5 * 2**20)),
        "above the limit",
        "config",
    ),
    Case("config.yaml nested deeply", text("config.yaml", "[" * 20000), "nested", "config"),
    Case("config.yaml aliases", text("config.yaml", BILLION_LAUGHS), "aliases", "config"),
    Case("config.yaml integer key", text("config.yaml", "1: 2\n"), "must be strings", "config"),
    Case("config.yaml bad date", text("config.yaml", "seed: 2001-02-30\n"), "YAML", "config"),
    Case("epochs a word", config_yaml(epochs="many"), "config value 'epochs'", "config"),
    Case("unknown option", config_yaml(colour="blue"), "unknown config key 'colour'", "config"),
    Case("device unknown", config_yaml(device="nosuch"), "is not a torch device", "use"),
    Case("device a number", config_yaml(device=3), "config value 'device'", "config"),
    skip_with_cuda(Case("device cuda", config_yaml(device="cuda"), "sees no CUDA GPU", "use")),
    Case(
        "data file missing",
        config_yaml(data="/nonexistent/flowforge-data.csv"),
        "does not exist",
        "use",
    ),
    Case("data file a FIFO", lambda run: make_fifo_data(run), "FIFO", "use"),
    # --- metrics.jsonl ---
    Case("metrics a FIFO", fifo("metrics.jsonl"), "FIFO", "metrics"),
    Case("metrics links outside", link_outside("metrics.jsonl"), "outside", "metrics"),
    Case("metrics garbage line", metrics("{oops\n{}\n"), "line 1 is not valid JSON", "metrics"),
    Case("metrics an array", metrics("[1, 2]\n"), "line 1 holds a JSON list", "metrics"),
    Case(
        "metrics a string NLL",
        metrics('{"epoch": 1, "val_nll": "low"}\n'),
        "val_nll is 'low'; expected a number",
        "metrics",
    ),
    # --- the directory itself ---
    Case("run directory missing", lambda run: shutil.rmtree(run), "does not exist", "dir"),
    Case("run directory a file", lambda run: replace_by_file(run), "not a", "dir"),
]


def make_fifo_data(run: Path) -> None:
    data = run.parent / "data.csv"
    os.mkfifo(data)
    config_yaml(data=str(data))(run)


def replace_by_file(run: Path) -> None:
    shutil.rmtree(run)
    run.write_text("not a directory\n")


def assert_one_line(error: BaseException, needle: str) -> str:
    message = str(error)
    assert message.strip() and "\n" not in message, repr(message)
    assert needle in message, message
    return message


def refused(call: Callable[[], object], needle: str) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call()
    return assert_one_line(info.value, needle)


def refused_by_cli(argv: list[str], needle: str, capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    return err


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_crafted_run_directory(case, run, capsys):
    """Each crafted run directory is refused with one line through ``flowforge.load``,
    ``runs.evaluate_run`` (and ``read_config`` / ``read_history``) and the command line."""
    case.corrupt(run)
    if case.where in ("model", "dir"):
        refused(lambda: flowforge.load(run), case.needle)
    if case.where == "config":
        refused(lambda: runs.read_config(run), case.needle)
    if case.where in ("config", "use"):
        flowforge.load(run)  # the model files are fine
    if case.where == "metrics":
        refused(lambda: runs.read_history(run), case.needle)
        refused_by_cli(["plot", str(run)], case.needle, capsys)
        return
    refused(lambda: runs.evaluate_run(run), case.needle)
    refused_by_cli(["eval", str(run)], case.needle, capsys)


def test_the_table_is_large():
    assert len(CASES) >= 60


# ------------------------------------------------------------------------ 1. size budget

BUDGET_SCRIPT = textwrap.dedent(
    """
    import json, resource, signal, sys, time
    import torch._dynamo  # imported by torch's first meta operation; once per process
    import flowforge
    from flowforge import models

    # Without the budget these would swamp the machine: fail fast instead.
    status = open("/proc/self/status").read()
    size = int(status.split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + 3 * 2**30, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("10 s")))
    flowforge.load(sys.argv[1])  # warm up on the valid run
    results = []
    for directory in sys.argv[2:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        signal.alarm(10)
        try:
            flowforge.load(directory)
            error = None
        except BaseException as caught:
            error = f"{type(caught).__name__}: {caught}"
        signal.alarm(0)
        seconds = time.perf_counter() - start
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        results.append({"seconds": seconds, "growth_mb": growth, "error": error})
    print(json.dumps(results))
    """
)

HUGE = {
    "layers: 10000000": {"layers": 10**7},
    "hidden: [20000, 20000], layers: 64": {"hidden": [20000, 20000], "layers": 64},
    "dim: 1000000000": {"dim": 10**9},
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures with /proc")
def test_budget_refuses_huge_descriptions_before_allocating(template, tmp_path):
    """model.json asking for 10^7 layers, 2 x 20,000 hidden units in 64 layers (~100 GB) or
    dim 10^9 is refused in under a second with under 200 MB of memory growth (measured in a
    fresh process: its peak resident size before and after)."""
    signal.alarm(0)  # the child process has its own limits on time and memory
    directories = []
    for i, changes in enumerate(HUGE.values()):
        directory = tmp_path / f"huge{i}"
        shutil.copytree(template, directory)
        with_config(**changes)(directory)
        directories.append(str(directory))
    done = subprocess.run(
        [sys.executable, "-c", BUDGET_SCRIPT, str(template), *directories],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in zip(HUGE, results, strict=True):
        print(f"{name}: {result}")
        assert result["error"] and result["error"].startswith("BudgetError"), (name, result)
        assert result["seconds"] < 1.0 and result["growth_mb"] < 200, (name, result)


def test_budget_limit_and_its_override(template, monkeypatch):
    """``max_parameters`` and FLOWFORGE_MAX_PARAMETERS bound what load and build make, with a
    line naming the count, the limit and how to raise it; the count is exact."""
    count = sum(t.numel() for t in [*tiny_flow().parameters(), *tiny_flow().buffers()])
    assert models.count_parameters("realnvp", {"dim": 2, "layers": 2, "hidden": [8]}) == count
    with pytest.raises(BudgetError, match=f"would have {count:,} parameters, above the limit of"):
        flowforge.load(template, max_parameters=count - 1)
    flowforge.load(template, max_parameters=count)
    monkeypatch.setenv("FLOWFORGE_MAX_PARAMETERS", str(count - 1))
    message = refused(lambda: flowforge.load(template), "FLOWFORGE_MAX_PARAMETERS")
    assert "model.json" in message
    refused(lambda: models.build({"model": "realnvp", "dim": 2, "layers": 2, "hidden": [8]}), "")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"layers": 10**7}, "STRUCTURE_LIMITS['layers']"),
        ({"hidden": [20000, 20000], "layers": 64}, "FLOWFORGE_MAX_PARAMETERS"),
    ],
)
def test_a_config_file_with_huge_sizes_is_refused_before_building(changes, needle):
    """runs.build_model, which ``flowforge fit`` uses, applies the same budget."""
    config = runs.make_config(None, {**TINY, **changes})
    with pytest.raises(BudgetError) as info:
        runs.build_model(config, 2)
    assert_one_line(info.value, needle)
    assert "raise it" in str(info.value)


SMALL = {
    "realnvp": {"dim": 5, "layers": 3, "hidden": [8], "mask": "odd-even", "actnorm": True},
    "nice": {"dim": 4, "layers": 2, "hidden": [8, 8], "actnorm": True},
    "maf": {"dim": 3, "layers": 3, "hidden": [8], "permutation": "random", "actnorm": True},
    "iaf": {"dim": 3, "layers": 3, "hidden": [8], "permutation": "random", "context_dim": 2},
    "nsf": {"dim": 3, "layers": 2, "hidden": [8], "context_dim": 2, "embedding_dim": 3},
    "planar": {"dim": 2, "layers": 3},
    "radial": {"dim": 2, "layers": 3},
    "realnvp_image": {"shape": [1, 8, 8], "scales": 2, "blocks": 1, "channels": 8},
    "glow": {"shape": [2, 8, 8], "levels": 2, "steps": 2, "channels": 8, "context_dim": 3},
}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameters_are_counted_exactly_without_allocating_for_every_builder(name):
    """The meta-device count equals the real one for every builder (random permutations and
    rotations drawn from CPU generators included), leaves the global random state as it was,
    so that the model then built is the one built without the check."""
    arguments = SMALL.get(name, {"shape": [1, 8, 8]} if runs.is_image_model(name) else {"dim": 3})
    torch.manual_seed(1)
    expected = models.MODELS[name](**arguments)
    torch.manual_seed(1)
    count = models.count_parameters(name, arguments)
    built = models.build({"model": name, **arguments})
    tensors = {id(t): t for t in (*expected.parameters(), *expected.buffers())}
    assert count == sum(t.numel() for t in tensors.values())
    for (key, a), (_, b) in zip(
        expected.state_dict().items(), built.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key


def test_the_papers_sizes_pass_the_structure_limits():
    """Legitimately large models are counted, not refused: NICE on MNIST, Glow at its
    paper's 3 levels x 32 steps x 512 channels."""
    assert models.check_budget("nice", {"dim": 784}) == models.count_parameters(
        "nice", {"dim": 784}
    )
    assert models.check_budget("glow", {"shape": [3, 32, 32]}) > 40_000_000


# ------------------------------------------------------------------------ 2. regular files


def test_only_regular_files_are_read(run, tmp_path):
    """FIFOs (opening one blocks), devices, directories and links out of the run directory
    are refused before they are opened, in flowforge.load, read_config, read_yaml,
    read_history and the data-file loaders; a link inside the run directory is followed."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # model.json and config.yaml as FIFOs
    pipe = run.parent / "pipe"
    os.mkfifo(pipe)
    for name in ("model.json", "config.yaml", "metrics.jsonl"):
        moved = outside / name
        (run / name).rename(moved)
        (run / name).symlink_to(moved)
    refused(lambda: flowforge.load(run), "outside")
    refused(lambda: runs.read_config(run), "outside")
    refused(lambda: runs.read_history(run), "outside")
    for name in ("model.json", "config.yaml", "metrics.jsonl"):
        (run / name).unlink()
        os.mkfifo(run / name)
    refused(lambda: flowforge.load(run), "FIFO")
    refused(lambda: runs.read_config(run), "FIFO")
    refused(lambda: runs.read_history(run), "FIFO")
    with pytest.raises(ConfigError, match="FIFO"):
        read_yaml(run / "config.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml(tmp_path)
    # a link inside the run directory is fine
    for name in ("model.json", "config.yaml", "metrics.jsonl"):
        (run / name).unlink()
        shutil.copy(outside / name, run / f"real-{name}")
        (run / name).symlink_to(f"real-{name}")
    flowforge.load(run)
    runs.read_config(run)
    assert runs.read_history(run) == [METRICS]
    # data files: FIFOs, a directory, a device
    for suffix in (".csv", ".npy", ".npz"):
        path = tmp_path / f"pipe{suffix}"
        os.mkfifo(path)
        refused(lambda path=path: flowforge.datasets.load(str(path)), "FIFO")
        refused(lambda path=path: flowforge.datasets.files.read_arrays(path), "FIFO")
    (tmp_path / "folder.csv").mkdir()
    refused(lambda: flowforge.datasets.load(str(tmp_path / "folder.csv")), "is a directory")
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    refused(lambda: flowforge.datasets.load(str(tmp_path / "zero.npy")), "character device")
    refused(lambda: flowforge.datasets.files.read_csv(pipe), "FIFO")
    # size caps on the text files
    (run / "model.json").unlink()
    valid = (outside / "model.json").read_text()
    (run / "model.json").write_text(valid[:-2] + " " * 2**23 + valid[-2:])
    refused(lambda: flowforge.load(run), "above the limit")


def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_data_files_declaring_more_than_they_hold_are_refused(tmp_path):
    """An .npy or .npz header declaring a huge or longer array than the file holds is
    refused before numpy allocates it."""
    for shape, needle in [((10**11, 2), "FLOWFORGE_MAX_ELEMENTS"), ((10**6, 2), "truncated")]:
        path = tmp_path / "huge.npy"
        path.write_bytes(npy_header(shape) + bytes(320))
        refused(lambda path=path: flowforge.datasets.load(str(path)), "huge.npy is not a usable")
        archive = tmp_path / "huge.npz"
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("x.npy", npy_header(shape) + bytes(320))
        refused(lambda archive=archive: flowforge.datasets.load(str(archive)), needle)


# ------------------------------------------------------------------------ 4. atomic writes


def test_writes_are_atomic_and_durable(tmp_path, monkeypatch):
    """flowforge.save and config.write_yaml write through flowforge.runtime.atomic: each file is
    flushed to the disk and renamed into place, and a write that fails leaves the old file
    and no temporary behind."""
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    run = tmp_path / "run"
    flowforge.save(tiny_flow(), run)
    assert len(synced) >= 2  # model.safetensors and model.json (and their directory)
    synced.clear()
    write_yaml({"data": "two-moons"}, run / "config.yaml")
    assert synced, "config.yaml was not flushed to the disk"
    old = {p.name: p.read_bytes() for p in run.iterdir()}

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("no space left on device")

    monkeypatch.setattr(io, "save_file", failing)
    with pytest.raises(OSError, match="no space left"):
        flowforge.save(tiny_flow(hidden=(16,)), run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == old
    assert flowforge.load(run).config["hidden"] == [8]
