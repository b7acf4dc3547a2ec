"""Bad command-line input: one line on stderr and a non-zero exit, never a traceback (unless
``--debug``), and nothing written for a refused ``fit`` or ``vi`` run.

The first tests each cover one case of an audit of bad invocations; ``test_bad_invocation``
runs a table of many more, in-process, each failing before any training starts.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
import pytest
import torch
import yaml

from flowforge.cli import main
from flowforge.runs.config import ConfigError

TINY = ["--n", "600", "--epochs", "1", "--layers", "2", "--hidden", "8", "--no-plots"]
TINY += ["--no-progress"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``flowforge ARGV`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str, status: int = 2) -> str:
    """The command failed with ``status`` and a last stderr line naming the problem."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("flowforge") and "error" in last, err
    assert code == status, (code, err)
    for needle in needles:
        assert needle in last, (needle, last)
    return last


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs made once for the module: a toy fit, a VI fit, an image fit, a conditional fit;
    and files to misuse."""
    root = tmp_path_factory.mktemp("hostile")
    quiet = ["--no-plots", "--no-progress"]
    fit = ["fit", "--data", "two-moons", "--out", root / "run", *TINY]
    vi = ["vi", "--out", root / "virun", "--steps", "2", "--layers", "2", *quiet]
    image = ["fit", "--data", "digits", "--model", "realnvp_image", "--out", root / "imgrun"]
    image += ["--epochs", "1", *quiet]
    for arg in ("scales=1", "blocks=0", "channels=4", "couplings=1"):
        image += ["--model-arg", arg]
    rows = np.random.default_rng(0).normal(size=(300, 3))
    np.savetxt(root / "cond.csv", rows, delimiter=",", header="a,b,c", comments="")
    conditional = ["fit", "--data", root / "cond.csv", "--context-columns", "2"]
    conditional += ["--out", root / "condrun", "--epochs", "1", "--layers", "2", "--hidden", "8"]
    for argv in (fit, vi, image, [*conditional, *quiet]):
        assert main([str(a) for a in argv]) == 0
    (root / "file.txt").write_text("not a directory\n")
    (root / "emptydir").mkdir()
    (root / "bad.yaml").write_text("epochs: [1,\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown.yaml").write_text("epoch: 3\n")
    (root / "negative.yaml").write_text("epochs: -1\n")
    (root / "hidden.yaml").write_text("hidden: [8]\n")
    (root / "bad.npy").write_bytes(b"\x93NUMPY this is not an array")
    np.save(root / "strings.npy", np.array(["a", "b"]))
    np.save(root / "wrongshape.npy", np.zeros((2, 3, 5, 7)))
    np.save(root / "context3.npy", np.zeros((4, 3)))
    (root / "hostile_targets.py").write_text(
        "import numpy as np\n"
        "import torch\n\n"
        "def same(z):\n    return z\n\n"
        "def ints(z):\n    return torch.zeros(len(z), dtype=torch.int64)\n\n"
        "def nan(z):\n    return z.sum(1) * float('nan')\n\n"
        "def posinf(z):\n    return z.sum(1) + float('inf')\n\n"
        "def array(z):\n    return np.zeros(len(z))\n\n"
        "def scalar(z):\n    return z.sum()\n\n"
        "def raises(z):\n    raise RuntimeError('boom')\n\n"
        "def none(z):\n    return None\n\n"
        "NOT_CALLABLE = 3\n"
    )
    return root


# --- the audit's cases, one test each --------------------------------------------------


def fit_args(runs, out, *extra):
    return ["fit", "--data", "two-moons", "--out", out, *TINY, *extra]


@pytest.mark.parametrize("device", ["nosuch", "cuda:99", "", "xla"])
def test_unknown_device_is_one_line_and_writes_nothing(runs, tmp_path, capsys, device):
    code, _, err = run_cli(fit_args(runs, tmp_path / "out", "--device", device), capsys)
    assert_one_line_error(code, err, f"device {device!r}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["fit", "vi"])
def test_cuda_without_cuda_is_one_line_and_writes_nothing(
    runs, tmp_path, capsys, monkeypatch, command
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if command == "fit":
        argv = fit_args(runs, tmp_path / "out", "--device", "cuda")
    else:
        argv = ["vi", "--out", tmp_path / "out", "--steps", "2", "--device", "cuda"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "'cuda'", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "out").exists()


def test_device_auto_is_resolved_and_recorded(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(fit_args(runs, tmp_path / "out", "--device", "auto"), capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["device"] == "cpu"


def test_tensorboard_without_tensorboard_fails_before_training(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = fit_args(runs, tmp_path / "out", "--tensorboard", tmp_path / "tb")
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--tensorboard", "pip install 'flowforge[tensorboard]'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("command", ["fit", "vi", "inpaint"])
def test_out_naming_an_existing_file_is_refused(runs, tmp_path, capsys, command):
    out = tmp_path / "taken"
    out.write_text("keep me\n")
    argv = {
        "fit": fit_args(runs, out),
        "vi": ["vi", "--out", out, "--steps", "2", "--no-plots", "--no-progress"],
        "inpaint": ["inpaint", runs / "imgrun", "--out", out, "--steps", "1", "--restarts", "1"],
    }[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--out", "exists and is not a directory")
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("n", ["-1", "0"])
def test_sample_count_must_be_positive(runs, tmp_path, capsys, n):
    code, _, err = run_cli(["sample", runs / "run", "-n", n, "--out", tmp_path / "s.npy"], capsys)
    assert_one_line_error(code, err, "-n", "positive integer")
    assert not (tmp_path / "s.npy").exists()


def test_sample_out_under_a_file_is_refused(runs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["sample", runs / "run", "-n", "5", "--out", tmp_path / "file" / "s.npy"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--out", "is a file, not a directory")


def test_sample_out_that_is_a_directory_is_refused(runs, tmp_path, capsys):
    code, _, err = run_cli(["sample", runs / "run", "-n", "5", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "--out", "is a directory")
    assert list(tmp_path.iterdir()) == [] and not tmp_path.with_suffix(".npy").exists()


@pytest.mark.parametrize(
    "function, problem",
    [
        ("os:getcwd", "failed on a test batch"),
        ("hostile_targets:same", "shape (4, 2)"),
        ("hostile_targets:ints", "dtype torch.int64"),
        ("hostile_targets:nan", "NaN or +inf"),
        ("hostile_targets:posinf", "NaN or +inf"),
        ("hostile_targets:array", "returned a 'ndarray' object"),
        ("hostile_targets:scalar", "shape ()"),
        ("hostile_targets:raises", "RuntimeError: boom"),
        ("hostile_targets:none", "returned a 'NoneType' object"),
    ],
)
def test_vi_target_function_is_checked_on_a_small_batch(
    runs, tmp_path, capsys, monkeypatch, function, problem
):
    monkeypatch.chdir(runs)
    argv = ["vi", "--out", tmp_path / "out", "--target", function, "--dim", "2", "--steps", "2"]
    code, _, err = run_cli([*argv, "--no-plots", "--no-progress"], capsys)
    assert_one_line_error(code, err, repr(function), problem)
    assert not (tmp_path / "out").exists()


def test_fit_with_a_huge_toy_n_is_refused_before_allocating(runs, tmp_path, capsys):
    argv = ["fit", "--data", "two-moons", "--n", "1000000000", "--out", tmp_path / "out"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "FLOWFORGE_MAX_ELEMENTS", "1,000,000,000")
    assert not (tmp_path / "out").exists()


def test_toy_size_limit_follows_the_environment(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLOWFORGE_MAX_ELEMENTS", "1000")
    code, _, err = run_cli(fit_args(runs, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, "FLOWFORGE_MAX_ELEMENTS", "limit of 1,000")
    assert not (tmp_path / "out").exists()


def test_sample_with_a_huge_n_is_refused_before_allocating(runs, tmp_path, capsys):
    argv = ["sample", runs / "run", "-n", "1000000000000", "--out", tmp_path / "s.npy"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "FLOWFORGE_MAX_ELEMENTS", "2,000,000,000,000 numbers")
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize(
    "argument, expected",
    [
        ("actnorm=maybe", "'actnorm' of 'realnvp' must be true or false, got 'maybe'"),
        ("actnorm=1", "'actnorm' of 'realnvp' must be true or false, got 1"),
        ("scale_bound=abc", "'scale_bound' of 'realnvp' must be a finite number"),
        ("mask=3", "'mask' of 'realnvp' must be a string"),
        ("embedding_dim=two", "'embedding_dim' of 'realnvp' must be an integer or null"),
    ],
)
def test_model_arguments_of_the_wrong_type_are_refused(runs, tmp_path, capsys, argument, expected):
    code, _, err = run_cli(fit_args(runs, tmp_path / "out", "--model-arg", argument), capsys)
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "out").exists()


def test_model_argument_of_a_float_accepts_yaml_exponents(runs, tmp_path, capsys):
    """YAML 1.1 reads ``1e-1`` as a string; a float argument takes it as the number."""
    code, _, err = run_cli(
        fit_args(runs, tmp_path / "out", "--model-arg", "scale_bound=1e0"), capsys
    )
    assert code == 0, err


@pytest.mark.parametrize("temperature", ["inf", "nan", "-1", "-inf"])
def test_sample_temperature_must_be_finite_and_not_negative(runs, tmp_path, capsys, temperature):
    argv = ["sample", runs / "run", f"--temperature={temperature}", "--out", tmp_path / "s.npy"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--temperature", "finite number >= 0")
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -0.5])
def test_sample_run_refuses_a_bad_temperature(runs, temperature):
    from flowforge import runs as api

    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        api.sample_run(runs / "run", 10, temperature=temperature)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--hidden", "8", "--model-arg", "hidden=[8,8]"], ["--hidden", "hidden=[8, 8]"]),
        (["--layers", "2", "--model-arg", "layers=3"], ["--layers", "layers=3"]),
        (["--config", "{runs}/hidden.yaml", "--model-arg", "hidden=[4]"], ["config key"]),
    ],
)
def test_an_option_given_also_as_a_model_argument_is_an_error(runs, tmp_path, capsys, extra, named):
    argv = ["fit", "--data", "two-moons", "--out", tmp_path / "out", "--n", "600"]
    argv += ["--epochs", "1", "--no-plots", "--no-progress"]
    argv += [e.format(runs=runs) for e in extra]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "given twice", *named)
    assert not (tmp_path / "out").exists()


def test_vi_base_given_also_as_a_model_argument_is_an_error(runs, tmp_path, capsys):
    argv = ["vi", "--out", tmp_path / "out", "--base", "normal", "--model-arg", "base=logistic"]
    code, _, err = run_cli([*argv, "--steps", "2", "--no-plots", "--no-progress"], capsys)
    assert_one_line_error(code, err, "given twice", "--base", "base='logistic'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (
            ["fit", "--debug", "--data", "two-moons", "--out", "{tmp}/out", "--device", "nosuch"],
            ValueError,
            "nosuch",
        ),
        (
            ["sample", "{runs}/run", "--debug", "-n", "10", "--out", "{runs}/file.txt/s.npy"],
            NotADirectoryError,
            "file.txt",
        ),
        (["eval", "--debug", "{tmp}/missing"], FileNotFoundError, "missing"),
        (
            ["vi", "--out", "{tmp}/out", "--target", "os:getcwd", "--dim", "2", "--debug"],
            ConfigError,
            r"target 'os:getcwd' failed on a test batch of shape \(4, 2\): TypeError",
        ),
    ],
)
def test_debug_lets_the_traceback_through(runs, tmp_path, capsys, argv, error, message):
    """Without --debug each of these is a one-line error (tests above); with it, the
    exception itself reaches the caller, traceback and all."""
    argv = [a.format(runs=runs, tmp=tmp_path) for a in argv]
    with pytest.raises(error, match=message) as caught:
        main(argv)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[1] == "main" and len(frames) > 3, frames  # from main down to where it arose
    assert not (tmp_path / "out").exists()


def test_debug_is_accepted_by_every_command(capsys):
    from flowforge.cli import build_parser

    parser = build_parser()
    commands = {"list": [], "demo": [], "eval": ["r"], "plot": ["r"], "diagnose": ["r"]}
    commands |= {"sample": ["r", "--out", "s.npy"], "inpaint": ["r", "--out", "o"]}
    commands |= {"fit": ["--out", "o"], "vi": ["--out", "o"]}
    for command, rest in commands.items():
        assert parser.parse_args([command, "--debug", *rest]).debug is True, command
        assert parser.parse_args([command, *rest]).debug is False, command


# --- a table of bad invocations ----------------------------------------------------------

OUT = "{out}"  # a path that does not exist yet: a refused fit or vi must not create it
FIT = ["fit", "--data", "two-moons", "--out", OUT, *TINY]
VI = ["vi", "--out", OUT, "--steps", "2", "--no-plots", "--no-progress"]
SAMPLE = ["sample", "{runs}/run", "--out", "{tmp}/s.npy"]
CONDITIONAL = ["sample", "{runs}/condrun", "--out", "{tmp}/s.npy"]
INPAINT = ["inpaint", "{runs}/imgrun", "--out", OUT, "--steps", "1", "--restarts", "1"]
CSV = ["--data", "{runs}/cond.csv"]

# fmt: off
BAD = {
    # the top level
    "no such command": ["nosuch"],
    "unknown top-level flag": ["--nosuch"],
    # fit: flags and values
    "fit without --out": ["fit", "--data", "two-moons"],
    "fit unknown flag": [*FIT, "--nosuch"],
    "fit stray argument": [*FIT, "extra"],
    "fit --out without a value": ["fit", "--out"],
    "fit unknown dataset": [*FIT, "--data", "nosuch"],
    "fit unknown model": [*FIT, "--model", "nosuch"],
    "fit --layers 0": [*FIT, "--layers", "0"],
    "fit --layers -3": [*FIT, "--layers", "-3"],
    "fit --layers two": [*FIT, "--layers", "two"],
    "fit --layers 1.5": [*FIT, "--layers", "1.5"],
    "fit --hidden 0": [*FIT, "--hidden", "0"],
    "fit --hidden 8,,8": [*FIT, "--hidden", "8,,8"],
    "fit --hidden abc": [*FIT, "--hidden", "abc"],
    "fit --hidden empty": [*FIT, "--hidden", ""],
    "fit --hidden -8": [*FIT, "--hidden=-8"],
    "fit --epochs 0": [*FIT, "--epochs", "0"],
    "fit --epochs -1": [*FIT, "--epochs", "-1"],
    "fit --epochs 1e3": [*FIT, "--epochs", "1e3"],
    "fit --batch-size 0": [*FIT, "--batch-size", "0"],
    "fit --batch-size x": [*FIT, "--batch-size", "x"],
    "fit --lr 0": [*FIT, "--lr", "0"],
    "fit --lr -1": [*FIT, "--lr", "-1"],
    "fit --lr nan": [*FIT, "--lr", "nan"],
    "fit --lr inf": [*FIT, "--lr", "inf"],
    "fit --lr abc": [*FIT, "--lr", "abc"],
    "fit --clip 0": [*FIT, "--clip", "0"],
    "fit --clip nan": [*FIT, "--clip", "nan"],
    "fit --weight-decay -1": [*FIT, "--weight-decay", "-1"],
    "fit --weight-decay inf": [*FIT, "--weight-decay", "inf"],
    "fit --schedule linear": [*FIT, "--schedule", "linear"],
    "fit --patience 0": [*FIT, "--patience", "0"],
    "fit --checkpoint-every 0": [*FIT, "--checkpoint-every", "0"],
    "fit --checkpoint-every 2.5": [*FIT, "--checkpoint-every", "2.5"],
    "fit --divergence-threshold -1": [*FIT, "--divergence-threshold", "-1"],
    "fit --divergence-threshold nan": [*FIT, "--divergence-threshold", "nan"],
    "fit --rollbacks -2": [*FIT, "--rollbacks", "-2"],
    "fit --rollbacks many": [*FIT, "--rollbacks", "many"],
    "fit --n 0": [*FIT, "--n", "0"],
    "fit --n 5 (too few to split)": [*FIT, "--n", "5"],
    "fit --n 1e9": [*FIT, "--n", "1000000000"],
    "fit --n huge": [*FIT, "--n", "10" * 20],
    "fit --seed -1": [*FIT, "--seed", "-1"],
    "fit --seed abc": [*FIT, "--seed", "abc"],
    "fit --seed too large": [*FIT, "--seed", "9" * 30],
    "fit --dtype float16": [*FIT, "--dtype", "float16"],
    # fit: devices
    "fit --device nosuch": [*FIT, "--device", "nosuch"],
    "fit --device cuda (none)": [*FIT, "--device", "cuda"],
    "fit --device cuda:99": [*FIT, "--device", "cuda:99"],
    "fit --device mps (none)": [*FIT, "--device", "mps"],
    "fit --device empty": [*FIT, "--device", ""],
    "fit --device xla": [*FIT, "--device", "xla"],
    "fit --device cpu:x": [*FIT, "--device", "cpu:x"],
    # fit: model arguments
    "fit --model-arg without =": [*FIT, "--model-arg", "actnorm"],
    "fit --model-arg without key": [*FIT, "--model-arg", "=3"],
    "fit --model-arg bad YAML": [*FIT, "--model-arg", "x=[1"],
    "fit --model-arg unknown": [*FIT, "--model-arg", "nosuch=3"],
    "fit --model-arg actnorm=maybe": [*FIT, "--model-arg", "actnorm=maybe"],
    "fit --model-arg actnorm=1": [*FIT, "--model-arg", "actnorm=1"],
    "fit --model-arg scale_bound=abc": [*FIT, "--model-arg", "scale_bound=abc"],
    "fit --model-arg scale_bound=.nan": [*FIT, "--model-arg", "scale_bound=.nan"],
    "fit --model-arg mask=diagonal": [*FIT, "--model-arg", "mask=diagonal"],
    "fit --model-arg mask=3": [*FIT, "--model-arg", "mask=3"],
    "fit --model-arg hidden with --hidden": [*FIT, "--model-arg", "hidden=[8,8]"],
    "fit --model-arg layers with --layers": [*FIT, "--model-arg", "layers=3"],
    "fit --model-arg context_dim": [*FIT, "--model-arg", "context_dim=2"],
    "fit --model-arg dim": [*FIT, "--model-arg", "dim=3"],
    "fit --model-arg embedding_dim, no context": [*FIT, "--model-arg", "embedding_dim=4"],
    "fit --model-arg activation=nosuch": [*FIT, "--model-arg", "activation=nosuch"],
    "fit --model-arg base=nosuch": [*FIT, "--model-arg", "base=nosuch"],
    "fit --model-arg bins=0 (nsf)": [*FIT, "--model", "nsf", "--model-arg", "bins=0"],
    "fit --model-arg residual=no! (maf)": [*FIT, "--model", "maf", "--model-arg", "residual=no!"],
    "fit --model-arg hidden=8": ["fit", "--out", OUT, "--n", "600", "--model-arg", "hidden=8"],
    "fit planar --hidden": [*FIT, "--model", "planar"],
    "fit image model on points": [*FIT, "--model", "glow"],
    "fit digits realnvp_image 9 scales": [
        "fit", "--data", "digits", "--model", "realnvp_image", "--out", OUT,
        "--model-arg", "scales=9",
    ],
    # fit: config files
    "fit --config missing": [*FIT, "--config", "{tmp}/missing.yaml"],
    "fit --config bad YAML": [*FIT, "--config", "{runs}/bad.yaml"],
    "fit --config a list": [*FIT, "--config", "{runs}/list.yaml"],
    "fit --config unknown key": [*FIT, "--config", "{runs}/unknown.yaml"],
    "fit --config epochs -1": ["fit", "--out", OUT, "--config", "{runs}/negative.yaml"],
    "fit --config a directory": [*FIT, "--config", "{runs}/emptydir"],
    "fit --config hidden and --model-arg hidden": [
        "fit", "--out", OUT, "--config", "{runs}/hidden.yaml", "--model-arg", "hidden=[4]"
    ],
    # fit: paths and data files
    "fit --out an existing file": [*FIT[:4], "{runs}/file.txt", *TINY],
    "fit --out under a file": [*FIT[:4], "{runs}/file.txt/run", *TINY],
    "fit --tensorboard an existing file": [*FIT, "--tensorboard", "{runs}/file.txt"],
    "fit --tensorboard under a file": [*FIT, "--tensorboard", "{runs}/file.txt/tb"],
    "fit --data missing .csv": [*FIT, "--data", "{tmp}/missing.csv"],
    "fit --data missing .npz": [*FIT, "--data", "{tmp}/missing.npz"],
    "fit --data a text file": [*FIT, "--data", "{runs}/file.txt"],
    "fit --data a corrupt .npy": [*FIT, "--data", "{runs}/bad.npy"],
    "fit --data a .npy of strings": [*FIT, "--data", "{runs}/strings.npy"],
    "fit --data a directory": [*FIT, "--data", "{runs}/emptydir"],
    "fit --data more rows than the file": [*FIT, *CSV],
    "fit --context-columns out of range": ["fit", "--out", OUT, *CSV, "--context-columns", "99"],
    "fit --context-columns on a toy": [*FIT, "--context-columns", "0"],
    "fit --context-columns unknown name": ["fit", "--out", OUT, *CSV, "--context-columns", "x"],
    "fit --context-columns all columns": [
        "fit", "--out", OUT, *CSV, "--context-columns", "0,1,2"
    ],
    "fit conditional data, unconditional model": [
        "fit", "--out", OUT, *CSV, "--context-columns", "2", "--model", "planar"
    ],
    "fit mnist without its files": [*FIT, "--data", "mnist", "--data-dir", "{tmp}/none"],
    "fit cifar10 without its files": [*FIT, "--data", "cifar10", "--data-dir", "{runs}"],
    # vi
    "vi without --out": ["vi", "--steps", "2"],
    "vi unknown flag": [*VI, "--epochs", "3"],
    "vi unknown target": [*VI, "--target", "nosuch"],
    "vi target os:getcwd": [*VI, "--target", "os:getcwd", "--dim", "2"],
    "vi target without --dim": [*VI, "--target", "os:getcwd"],
    "vi target of a missing function": [*VI, "--target", "os:nosuchfunction", "--dim", "2"],
    "vi target of a missing module": [*VI, "--target", "nosuch_module_xyz:f", "--dim", "2"],
    "vi target without a module": [*VI, "--target", ":f", "--dim", "2"],
    "vi target without a function": [*VI, "--target", "os:", "--dim", "2"],
    "vi target not callable": [*VI, "--target", "hostile_targets:NOT_CALLABLE", "--dim", "2"],
    "vi target of the wrong shape": [*VI, "--target", "hostile_targets:same", "--dim", "2"],
    "vi target of integers": [*VI, "--target", "hostile_targets:ints", "--dim", "2"],
    "vi target of NaN": [*VI, "--target", "hostile_targets:nan", "--dim", "2"],
    "vi target of +inf": [*VI, "--target", "hostile_targets:posinf", "--dim", "2"],
    "vi target of a numpy array": [*VI, "--target", "hostile_targets:array", "--dim", "2"],
    "vi target of a scalar": [*VI, "--target", "hostile_targets:scalar", "--dim", "2"],
    "vi target that raises": [*VI, "--target", "hostile_targets:raises", "--dim", "2"],
    "vi target of None": [*VI, "--target", "hostile_targets:none", "--dim", "3"],
    "vi target of a huge dimension": [*VI, "--target", "hostile_targets:same", "--dim", "10" * 7],
    "vi named target of a huge dimension": [*VI, "--dim", "10" * 7],
    "vi --steps 0": [*VI, "--steps", "0"],
    "vi --steps -5": [*VI, "--steps", "-5"],
    "vi --anneal -1": [*VI, "--anneal", "-1"],
    "vi --batch-size 0": [*VI, "--batch-size", "0"],
    "vi --dim 0": [*VI, "--dim", "0"],
    "vi --base nosuch": [*VI, "--base", "nosuch"],
    "vi --base and --model-arg base": [*VI, "--base", "normal", "--model-arg", "base=logistic"],
    "vi unknown model": [*VI, "--model", "nosuch"],
    "vi image model": [*VI, "--model", "glow"],
    "vi --schedule plateau": [*VI, "--schedule", "plateau"],
    "vi --device nosuch": [*VI, "--device", "nosuch"],
    "vi --device cuda (none)": [*VI, "--device", "cuda"],
    "vi --dtype half": [*VI, "--dtype", "half"],
    "vi --lr 0": [*VI, "--lr", "0"],
    "vi --model-arg unknown": [*VI, "--model-arg", "nosuch=1"],
    "vi --model-arg hidden for planar": [*VI, "--model-arg", "hidden=[8]"],
    "vi --model-arg residual=no! (iaf)": [*VI, "--model", "iaf", "--model-arg", "residual=no!"],
    "vi --config bad YAML": [*VI, "--config", "{runs}/bad.yaml"],
    "vi --config of fit keys": [*VI, "--config", "{runs}/unknown.yaml"],
    "vi --out an existing file": ["vi", "--out", "{runs}/file.txt", "--steps", "2"],
    "vi --out under a file": ["vi", "--out", "{runs}/file.txt/run", "--steps", "2"],
    # diagnose
    "diagnose without a run": ["diagnose"],
    "diagnose a missing run": ["diagnose", "{tmp}/missing"],
    "diagnose a file": ["diagnose", "{runs}/file.txt"],
    "diagnose a fit run": ["diagnose", "{runs}/run", "-n", "100"],
    "diagnose -n 1": ["diagnose", "{runs}/virun", "-n", "1"],
    "diagnose -n 0": ["diagnose", "{runs}/virun", "-n", "0"],
    "diagnose -n abc": ["diagnose", "{runs}/virun", "-n", "abc"],
    "diagnose -n huge": ["diagnose", "{runs}/virun", "-n", "10" * 7],
    "diagnose --seed -1": ["diagnose", "{runs}/virun", "--seed", "-1"],
    "diagnose unknown flag": ["diagnose", "{runs}/virun", "--split", "test"],
    # eval
    "eval without a run": ["eval"],
    "eval a missing run": ["eval", "{tmp}/missing"],
    "eval a file": ["eval", "{runs}/file.txt"],
    "eval an empty directory": ["eval", "{runs}/emptydir"],
    "eval a VI run": ["eval", "{runs}/virun"],
    "eval --split nosuch": ["eval", "{runs}/run", "--split", "nosuch"],
    "eval unknown flag": ["eval", "{runs}/run", "-n", "3"],
    # sample
    "sample without --out": ["sample", "{runs}/run"],
    "sample without a run": ["sample", "--out", "{tmp}/s.npy"],
    "sample a missing run": ["sample", "{tmp}/missing", "--out", "{tmp}/s.npy"],
    "sample an empty directory": ["sample", "{runs}/emptydir", "--out", "{tmp}/s.npy"],
    "sample -n 0": [*SAMPLE, "-n", "0"],
    "sample -n -1": [*SAMPLE, "-n", "-1"],
    "sample -n abc": [*SAMPLE, "-n", "abc"],
    "sample -n 1.5": [*SAMPLE, "-n", "1.5"],
    "sample -n 1e3": [*SAMPLE, "-n", "1e3"],
    "sample -n 1e12": [*SAMPLE, "-n", "1000000000000"],
    "sample --temperature inf": [*SAMPLE, "--temperature", "inf"],
    "sample --temperature nan": [*SAMPLE, "--temperature", "nan"],
    "sample --temperature -1": [*SAMPLE, "--temperature", "-1"],
    "sample --temperature abc": [*SAMPLE, "--temperature", "abc"],
    "sample --seed -1": [*SAMPLE, "--seed", "-1"],
    "sample --out under a file": ["sample", "{runs}/run", "--out", "{runs}/file.txt/s.npy"],
    "sample --out a directory": ["sample", "{runs}/run", "--out", "{runs}/emptydir"],
    "sample --context for an unconditional run": [*SAMPLE, "--context", "1,2"],
    "sample --context and --context-file": [
        *SAMPLE, "--context", "1", "--context-file", "{runs}/context3.npy"
    ],
    "sample conditional without a context": CONDITIONAL,
    "sample conditional, context too long": [*CONDITIONAL, "--context", "1,2,3"],
    "sample conditional, context not numbers": [*CONDITIONAL, "--context", "abc"],
    "sample conditional, context nan": [*CONDITIONAL, "--context", "nan"],
    "sample conditional, huge n": [*CONDITIONAL, "--context", "1", "-n", "10" * 7],
    "sample --context-file missing": [*CONDITIONAL, "--context-file", "{tmp}/c.npy"],
    "sample --context-file of text": [*CONDITIONAL, "--context-file", "{runs}/file.txt"],
    "sample --context-file corrupt": [*CONDITIONAL, "--context-file", "{runs}/bad.npy"],
    "sample --context-file of strings": [*CONDITIONAL, "--context-file", "{runs}/strings.npy"],
    "sample --context-file too wide": [*CONDITIONAL, "--context-file", "{runs}/context3.npy"],
    # plot
    "plot without a run": ["plot"],
    "plot a missing run": ["plot", "{tmp}/missing"],
    "plot a file": ["plot", "{runs}/file.txt"],
    "plot a VI run": ["plot", "{runs}/virun"],
    "plot --temperature -1": ["plot", "{runs}/run", "--temperature", "-1"],
    "plot --temperature inf": ["plot", "{runs}/run", "--temperature", "inf"],
    "plot --temperature abc": ["plot", "{runs}/run", "--temperature", "abc"],
    # inpaint
    "inpaint without --out": ["inpaint", "{runs}/imgrun"],
    "inpaint a missing run": ["inpaint", "{tmp}/missing", "--out", OUT],
    "inpaint a toy run": ["inpaint", "{runs}/run", "--out", OUT],
    "inpaint --restarts 0": [*INPAINT, "--restarts", "0"],
    "inpaint --steps 0": [*INPAINT, "--steps", "0"],
    "inpaint --steps -1": [*INPAINT, "--steps", "-1"],
    "inpaint --lr 0": [*INPAINT, "--lr", "0"],
    "inpaint --lr nan": [*INPAINT, "--lr", "nan"],
    "inpaint --seed -1": [*INPAINT, "--seed", "-1"],
    "inpaint --out an existing file": ["inpaint", "{runs}/imgrun", "--out", "{runs}/file.txt"],
    "inpaint --out under a file": ["inpaint", "{runs}/imgrun", "--out", "{runs}/file.txt/o"],
    "inpaint --image first:0": [*INPAINT, "--image", "first:0"],
    "inpaint --image out of range": [*INPAINT, "--image", "99999"],
    "inpaint --image negative": [*INPAINT, "--image=-1"],
    "inpaint --image abc": [*INPAINT, "--image", "abc"],
    "inpaint --image missing .npy": [*INPAINT, "--image", "{tmp}/missing.npy"],
    "inpaint --image of the wrong shape": [*INPAINT, "--image", "{runs}/wrongshape.npy"],
    "inpaint --mask nosuch": [*INPAINT, "--mask", "nosuch"],
    "inpaint --mask missing .npy": [*INPAINT, "--mask", "{tmp}/missing.npy"],
    "inpaint --mask of the wrong shape": [*INPAINT, "--mask", "{runs}/wrongshape.npy"],
    # list and demo
    "list stray argument": ["list", "extra"],
    "list unknown flag": ["list", "--all"],
    "demo --seed abc": ["demo", "--seed", "abc"],
    "demo --seed -1": ["demo", "--seed", "-1"],
    "demo stray argument": ["demo", "extra"],
}
# fmt: on


def listing(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")


@pytest.mark.parametrize("argv", BAD.values(), ids=BAD.keys())
def test_bad_invocation(runs, tmp_path, capsys, monkeypatch, argv):
    """One line on stderr, exit status 2, no traceback, nothing written by fit or vi."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(runs)  # where module:function targets are imported from
    before = listing(runs)
    out = tmp_path / "out"
    argv = [a.format(runs=runs, tmp=tmp_path, out=out) for a in argv]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err)
    assert not out.exists(), "a refused command wrote its output"
    assert (runs / "file.txt").read_text() == "not a directory\n"
    assert listing(runs) == before
    assert list((runs / "emptydir").iterdir()) == []


def test_the_table_is_large_and_distinct():
    assert len(BAD) >= 130
    assert len({tuple(argv) for argv in BAD.values()}) == len(BAD)
