"""The ``flowforge`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from flowforge import __version__
from flowforge.flows import models
from flowforge.nn.made import MADE
from flowforge.nn.mlp import MLP, ConvResNet
from flowforge.nn.velocity import TimeMLP
from flowforge.runs.config import SCHEMA, VI_SCHEMA
from flowforge.runtime import interrupts, logs
from flowforge.runtime.files import one_line
from flowforge.runtime.options import Option, integer, number, spelled
from flowforge.training.loop import DivergenceError
from flowforge.training.options import FIT, SEED
from flowforge.transforms.continuous import METHODS


def demo(seed: int = 0) -> None:
    """Build each model, evaluate log-densities and draw samples; print what comes out.

    Conditioners start at zero (the identity map); the demo gives their last layers small
    random weights so that every model is a non-trivial, untrained map.
    """
    torch.manual_seed(seed)
    specs = {
        "realnvp": dict(dim=2, layers=8, hidden=(64, 64)),
        "nice": dict(dim=784, layers=4, hidden=(1000,) * 5),
        "planar": dict(dim=2, layers=32),
        "radial": dict(dim=2, layers=32),
        "realnvp_image": dict(shape=(1, 28, 28), scales=3, blocks=1, channels=32),
        "glow": dict(shape=(1, 28, 28), levels=2, steps=4, channels=32),
        "maf": dict(dim=8, layers=5, hidden=(64, 64)),
        "iaf": dict(dim=8, layers=5, hidden=(64, 64)),
        "nsf": dict(dim=8, layers=4, bins=8, hidden=(64, 64)),
    }
    print(
        f"flowforge {__version__}, torch {torch.__version__}, random untrained weights, seed {seed}"
    )
    print(
        f"{'model':14} {'shape':>10} {'params':>10} {'mean log p(x)':>14} "
        f"{'sample mean':>12} {'sample std':>11} {'round trip':>11} {'|log q - log p|':>16} "
        f"{'time':>7}"
    )
    for name, builder in models.MODELS.items():
        # a model without its own entry: its builder's defaults on 2-D points (or 8x8 images)
        image = "shape" in inspect.signature(builder).parameters
        kwargs = specs.get(name, {"shape": (1, 8, 8)} if image else {"dim": 2})
        start = time.perf_counter()
        flow = models.MODELS[name](**kwargs)
        for module in flow.modules():
            if isinstance(module, MLP | ConvResNet | MADE | TimeMLP):
                last = {MADE: "output", TimeMLP: "out"}.get(type(module))
                last = module[-1] if last is None else getattr(module, last)
                torch.nn.init.normal_(last.weight, std=0.05 if name != "glow" else 0.01)
        shape = tuple(flow.event_shape)
        # Image models take pixels in [0, 1]; vector models any real vector.
        x = torch.rand(64, *shape) if len(shape) == 3 else torch.randn(256, *shape)
        with torch.no_grad():
            log_p = flow.log_prob(x)
            z, _ = flow.transform(x)
            x_back, _ = flow.transform.inverse(z)
            samples, log_q = flow.sample_and_log_prob(256 if len(shape) == 3 else 1000)
            gap = (log_q - flow.log_prob(samples)).abs().max()
        elapsed = time.perf_counter() - start
        print(
            f"{name:14} {'x'.join(map(str, shape)):>10} "
            f"{sum(p.numel() for p in flow.parameters()):>10,} "
            f"{log_p.mean():>14.3f} {samples.mean():>12.3f} {samples.std():>11.3f} "
            f"{(x_back - x).abs().max():>11.1e} {gap:>16.1e} {elapsed:>6.2f}s"
        )
    print("round trip: max |f^-1(f(x)) - x|; last column: sample_and_log_prob vs log_prob.")


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as levels=2, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(
            f"the value of {text!r} is not valid YAML; expected a number, true/false, a word "
            "or a list such as [64,64]"
        ) from None
    return key.strip().replace("-", "_"), parsed


def _typed(option: Option) -> Callable[[str], Any]:
    """An argparse ``type`` reading a flag's text by ``option``'s schema
    (`flowforge.runtime.options`): a clean usage error "expected ..., got '...'" otherwise."""

    def parse(text: str) -> Any:
        try:
            return option.read(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


_POSITIVE = _typed(Option(integer(1)))
_COUNT = _typed(Option(integer(0)))
_NUMBER = _typed(Option(number(0.0)))
_SEED = _typed(SEED)


def _add_option(
    group, key: str, *flags: str, schema: Mapping[str, Option] = SCHEMA, **kwargs: Any
) -> None:
    """The flag ``--KEY`` (underscores as dashes; or ``flags``) of config key ``key``, read by
    its option in ``schema`` (`flowforge.runs.config.SCHEMA`), so that a flag, a YAML key
    and ``ff.fit``'s keyword take the same values."""
    option = schema[key]
    if option.kind.values is not None:  # a choice: list its words as argparse would
        kwargs.setdefault("metavar", "{" + ",".join(map(spelled, option.kind.values)) + "}")
    group.add_argument(
        *(flags or [f"--{key.replace('_', '-')}"]), dest=key, type=_typed(option), **kwargs
    )


def _debug_parent() -> argparse.ArgumentParser:
    """The options every sub-command has (``flowforge fit --debug ...``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the full traceback instead of one line",
    )
    return parent


def _add_command(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    return commands.add_parser(name, parents=[_debug_parent()], **kwargs)


def _run_parser(commands, name: str, help: str, description: str, defaults: str):
    """A sub-command that writes a run directory, with the options that fit and vi share."""
    parser = _add_command(commands, name, help=help, description=description)
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--config", help="YAML file of options (keys as the flags, with _)")
    options = parser.add_argument_group(f"options (default: see flowforge.runs.config.{defaults})")
    _add_option(options, "model", help="model name (flowforge list)")
    _add_option(options, "layers")
    _add_option(options, "hidden", help="conditioner widths, e.g. 64,64")
    options.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="an argument of the model builder, e.g. --model-arg levels=2 (repeatable)",
    )
    _add_option(options, "seed")
    _add_option(options, "batch_size")
    _add_option(options, "lr")
    _add_option(options, "clip", help="gradient-norm clipping")
    _add_option(options, "device", help="auto, cpu, cuda, cuda:1, ... (default: cpu)")
    _add_option(options, "dtype")
    options.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    options.add_argument("--no-plots", dest="plots", action="store_const", const=False)
    return parser, options


def _add_fit(commands) -> None:
    fit, options = _run_parser(
        commands,
        "fit",
        help="train a flow on a dataset by maximum likelihood and write a run directory",
        description="Train a flow by maximum likelihood. Every option can also be set in a "
        "YAML file (--config); flags given here override the file.",
        defaults="DEFAULTS",
    )
    fit.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    fit.add_argument(
        "--nproc",
        type=_POSITIVE,
        metavar="N",
        help="train on N local processes (torch.distributed, started by torch's elastic "
        "launcher; for several machines start flowforge fit under torchrun instead)",
    )
    fit.add_argument(
        "--max-restarts",
        type=_COUNT,
        default=0,
        metavar="K",
        help="with --nproc: when a worker dies, start the group again up to K times, each "
        "time resuming from the last checkpoint (default 0: the run ends)",
    )
    _add_option(
        options,
        "data",
        help="dataset name (flowforge list), or a .npz (arrays x and optional context), .npy "
        "or .csv file of tabular data",
    )
    _add_option(options, "data_dir", help="directory of data files (MNIST, CIFAR-10)")
    _add_option(
        options,
        "context_columns",
        help="columns of a .csv/.npy data file that are the context (indices or header names, "
        "e.g. 0,1): fits a conditional flow q(x|c) to the other columns",
    )
    _add_option(
        options,
        "n",
        "--n-samples",
        "--n",
        help="toy samples in all splits; MNIST/CIFAR-10 training limit; rows of a data file",
    )
    _add_option(options, "epochs")
    _add_option(options, "weight_decay")
    _add_option(options, "schedule")
    _add_option(options, "patience", help="early stopping on validation NLL")
    _add_option(
        options,
        "checkpoint_every",
        metavar="STEPS",
        help="also checkpoint every STEPS steps inside an epoch (default: at epoch ends)",
    )
    _add_option(
        options,
        "divergence_threshold",
        metavar="SPREADS",
        help="a loss this many spreads above the running loss is a divergence (default 10)",
    )
    _add_option(
        options,
        "rollbacks",
        help="rollbacks to the last good state, each halving the learning rate, before a "
        "divergence stops the run (default 5)",
    )
    _add_option(
        options,
        "objective",
        help="what to minimise: the NLL (default) or, for --model cnf, flow matching",
    )
    _add_option(
        options,
        "coupling",
        help="flow matching's pairing of noise and data: independent (default), exact optimal "
        "transport, or draws from the entropic plan (sinkhorn: needs the ot extra)",
    )
    _add_option(
        options,
        "coupling_reg",
        help="the entropic regulariser of --coupling sinkhorn, relative to the batch's largest "
        "squared distance (default 0.05)",
    )
    _add_option(
        options,
        "sigma_min",
        help="flow matching's path width at the data, in [0, 1) (default 0)",
    )
    _add_option(
        options,
        "compile",
        help="compile the training step with torch.compile: auto (default: when the run's "
        "steps repay the compile time), true or false",
    )
    _add_option(
        options,
        "adam_betas",
        metavar="B1,B2",
        help="Adam's betas, e.g. 0.9,0.99 (default torch's 0.9,0.999; NICE on MNIST: the "
        "paper's 0.9,0.99)",
    )
    _add_option(
        options,
        "adam_eps",
        metavar="EPS",
        help="Adam's epsilon (default torch's 1e-8; NICE on MNIST: the paper's 1e-4)",
    )
    _add_option(
        options,
        "precision",
        help="bf16: the networks' matrix products in bfloat16, the log-determinants and the "
        "loss in float32 (default float32)",
    )
    _add_option(
        options,
        "ema",
        metavar="DECAY",
        help="evaluate and keep an exponential moving average of the weights with this decay "
        "in (0, 1), e.g. 0.99 (default: none)",
    )
    _add_option(options, "tensorboard", help="TensorBoard log directory")


def _add_vi(commands) -> None:
    _, options = _run_parser(
        commands,
        "vi",
        help="fit a flow to an unnormalised density by reverse KL (variational inference)",
        description="Fit a flow q to exp(-U) by minimising KL(q||p). Options can also be set "
        "in a YAML file (--config); flags override it.",
        defaults="VI_DEFAULTS",
    )
    _add_option(options, "target", help="target name (flowforge list) or module:function")
    _add_option(options, "dim", help="dimension (module:function targets)")
    _add_option(options, "base", help="normal, logistic or diag-normal (default)")
    _add_option(options, "steps")
    _add_option(options, "anneal", help="steps of annealing beta from 0.01 to 1")
    _add_option(options, "schedule", schema=VI_SCHEMA)
    diagnose = _add_command(
        commands,
        "diagnose",
        help="KL, ELBO, importance-sampled log Z, ESS and Pareto k-hat of a VI run",
    )
    diagnose.add_argument("run", help="run directory of flowforge vi")
    diagnose.add_argument(
        "-n",
        type=_typed(Option(integer(2))),
        default=100_000,
        help="samples (default 100000)",
    )
    diagnose.add_argument("--seed", type=_SEED, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowforge",
        description="Normalizing flows: fit densities, sample, and approximate posteriors.",
    )
    parser.add_argument("--version", action="version", version=f"flowforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_fit(commands)
    _add_vi(commands)
    evaluate = _add_command(
        commands, "eval", help="test NLL of a run beside a Gaussian baseline and the true entropy"
    )
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    sample = _add_command(commands, "sample", help="draw samples from a run into a .npy file")
    sample.add_argument("run", help="run directory")
    sample.add_argument("-n", type=_POSITIVE, default=1000, help="number of samples (default 1000)")
    sample.add_argument("--out", required=True, help="output .npy file")
    sample.add_argument("--temperature", type=_NUMBER, default=1.0)
    sample.add_argument("--seed", type=_SEED, default=None)
    sample.add_argument(
        "--method",
        choices=METHODS,
        help="for a continuous run: the ODE method of the sampling pass (default: the run's)",
    )
    sample.add_argument(
        "--steps",
        type=_POSITIVE,
        help="for a continuous run: sample with this many fixed steps (fast; e.g. --method "
        "rk4 --steps 8) instead of the adaptive solve",
    )
    given = sample.add_mutually_exclusive_group()
    given.add_argument(
        "--context",
        help="for a conditional run: one context, comma-separated (--context=-1,0.5 for a "
        "leading minus); samples (n, D)",
    )
    given.add_argument(
        "--context-file",
        help="for a conditional run: a .npy or .csv file of m contexts (m, k); samples (n, m, D)",
    )
    plot = _add_command(commands, "plot", help="(re)draw a run's figures into RUN/plots")
    plot.add_argument("run", help="run directory")
    plot.add_argument("--temperature", type=_NUMBER, default=1.0, help="for image samples")
    inpaint = _add_command(
        commands,
        "inpaint",
        help="fill masked pixels of test images by maximising the run's log-likelihood",
        description="MAP inpainting with a trained flow as the prior (NICE, section 5.2): the "
        "missing pixels maximise log p(x) with the observed ones fixed. Writes a figure "
        "(original, masked, inpainted, baselines), the images and their PSNR.",
    )
    inpaint.add_argument("run", help="run directory of an image model")
    inpaint.add_argument(
        "--image", default="first:8", help="test indices 0,1,2 or first:N, or a .npy file"
    )
    inpaint.add_argument(
        "--mask", default="center", help="center, top, random50, or a .npy/.png mask file"
    )
    inpaint.add_argument("--out", required=True, help="directory to write")
    inpaint.add_argument("--restarts", type=_POSITIVE, default=8)
    inpaint.add_argument("--steps", type=_POSITIVE, default=1000)
    inpaint.add_argument("--lr", type=_typed(FIT["lr"]), default=0.1)
    inpaint.add_argument("--seed", type=_SEED, default=0)
    inpaint.add_argument("--no-baselines", dest="baselines", action="store_false")
    _add_command(commands, "list", help="the datasets and models, one line each")
    run_demo = _add_command(
        commands, "demo", help="build each model, print log-probs and sample statistics"
    )
    run_demo.add_argument("--seed", type=_SEED, default=0, help="random seed (default 0)")
    return parser


def _list() -> None:
    from flowforge import datasets

    print("datasets:")
    for name, description in datasets.DATASETS.items():
        print(f"  {name:<14} {description}")
    print(
        f"  {'FILE':<14} your own data: FILE.npz (arrays x (N, D), optional context (N, k)), "
        "FILE.npy (N, D) or FILE.csv (--context-columns); split 80/10/10"
    )
    from flowforge.inference import targets

    print("targets (flowforge vi):")
    for name, description in targets.TARGETS.items():
        print(f"  {name:<14} {description}")
    print("models:")
    for name, builder in models.MODELS.items():
        summary = (builder.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<14} {summary.replace('``', '')}")


def _train(args: argparse.Namespace) -> None:
    """``flowforge fit`` and ``flowforge vi``."""
    from flowforge import runs

    if args.model_args is not None:
        args.model_args = dict(args.model_args)
    if args.command == "fit":
        keys = [k for k in config_keys() if hasattr(args, k)]
        config = runs.make_config(args.config, {k: getattr(args, k) for k in keys})
        _check_training(config, args.out)
        if (args.nproc or 1) > 1 and "RANK" not in os.environ:  # start the workers
            from flowforge.training import distributed as launcher

            launcher.launch_local(args.nproc, sys.argv[1:], max_restarts=args.max_restarts)
            return
        _, history = runs.fit_run(config, args.out, resume=args.resume)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        last = history.epochs[-1] if history.epochs else {}
        loss = "flow-matching loss" if config["objective"] == "flow-matching" else "train NLL"
        key = "train_fm_loss" if config["objective"] == "flow-matching" else "train_nll"
        print(
            f"{history.stopped} after {len(history)} epochs; best validation NLL "
            f"{history.best_val_nll} at epoch {history.best_epoch}; last {loss} "
            f"{last.get(key)}; run written to {args.out}"
        )
    else:
        keys = [k for k in vi_config_keys() if hasattr(args, k)]
        config = runs.make_vi_config(args.config, {k: getattr(args, k) for k in keys})
        _check_training(config, args.out)
        _, history = runs.vi_run(config, args.out)
        last = history.records[-1] if history.records else {}
        print(
            f"{history.stopped} after {last.get('step', 0)} steps; final ELBO "
            f"{last.get('elbo')}; run written to {args.out}"
        )


def _check_training(config: dict, out: str) -> None:
    """Refuse, before anything is built or written, a run that would fail later: a device
    this machine lacks, TensorBoard logging without tensorboard, an ``--out`` that cannot
    be a directory. The device is stored resolved (``auto`` -> ``cpu`` or ``cuda``)."""
    from flowforge.runtime import devices
    from flowforge.runtime.extras import MissingExtraError

    config["device"] = str(devices.resolve(config["device"]))
    _check_directory(out, "--out")
    if config.get("tensorboard") is not None:
        _check_directory(config["tensorboard"], "--tensorboard")
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise MissingExtraError("--tensorboard", "tensorboard") from None


def _check_directory(path: str | os.PathLike, option: str) -> None:
    """``path`` is, or can be made, a directory: it is one, or its nearest existing
    ancestor is a directory that can be written."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{option} {path} exists and is not a directory")
        return
    _check_parent(path, option)


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` is a writable directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"{option} {path}: {ancestor} is a file, not a directory, so nothing can be "
            "written under it"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the directory {ancestor} is not writable")


def _check_sample_out(out: Path) -> None:
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; expected a .npy file to write")
    if out.exists() and not out.is_file():
        raise FileExistsError(f"--out {out} exists and is not a regular file")
    _check_parent(out, "--out")


def _run(args: argparse.Namespace) -> None:
    from flowforge import runs
    from flowforge.runtime import limits

    if args.command in ("fit", "vi"):
        _train(args)
    elif args.command == "diagnose":
        limits.check_elements(args.n, f"the log-weights of {args.n:,} draws (diagnose -n)")
        print(runs.diagnose_run(args.run, n=args.n, seed=args.seed))
    elif args.command == "eval":
        print(runs.format_evaluation(runs.evaluate_run(args.run, args.split)))
    elif args.command == "sample":
        context = None
        if args.context is not None:
            context = runs.parse_context(args.context)
        elif args.context_file is not None:
            context = runs.read_context_file(args.context_file)
        out = Path(args.out)
        _check_sample_out(out)
        samples = runs.sample_run(
            args.run,
            args.n,
            args.temperature,
            args.seed,
            context,
            method=args.method,
            steps=args.steps,
            log=print,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples)
        if context is not None and np.ndim(context) == 2:
            print(
                f"wrote {args.n} samples for each of {samples.shape[1]} contexts, "
                f"array of shape {samples.shape}, to {out}"
            )
        else:
            print(f"wrote {samples.shape[0]} samples of shape {samples.shape[1:]} to {out}")
    elif args.command == "plot":
        for path in runs.plot_run(args.run, temperature=args.temperature, log=print):
            print(path)
    elif args.command == "inpaint":
        _check_directory(args.out, "--out")
        report = runs.inpaint_run(
            args.run,
            args.image,
            args.mask,
            args.out,
            restarts=args.restarts,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            baselines=args.baselines,
        )
        for name, scores in report.items():
            if isinstance(scores, dict):
                print(f"{name:<22} PSNR {scores['psnr']:.2f} dB")
        print(f"written to {args.out}")
    elif args.command == "list":
        _list()
    elif args.command == "demo":
        demo(seed=args.seed)


def config_keys() -> list[str]:
    from flowforge.runs.config import DEFAULTS

    return list(DEFAULTS)


def vi_config_keys() -> list[str]:
    from flowforge.runs.config import VI_DEFAULTS

    return list(VI_DEFAULTS)


EXIT_INTERNAL = 1  # an unexpected error (a bug): one line, the traceback with --debug
EXIT_ERROR = 2  # bad input: one line saying what is wrong and what was expected
EXIT_DIVERGED = 3  # training diverged beyond recovery; the last good weights are saved
# a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM), what was done is saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flowforge`` command; return its exit status (see ``EXIT_*`` above)."""
    with interrupts.handling(hard_exit=True):
        try:
            args = build_parser().parse_args(argv)
        except interrupts.Interrupted as stop:
            return stop.exit_code
        if args.command is None:
            build_parser().print_help()
            return 0
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    with logs.installed():  # the library's warnings and progress lines on stderr
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    """Run the command; its errors as one line each and an exit status."""
    prefix = f"flowforge {args.command}"
    debug = getattr(args, "debug", False)
    try:
        _run(args)
    except interrupts.Interrupted as stop:
        print(f"{prefix}: stopped by {stop.name}{_saved(stop)}", file=sys.stderr)
        return stop.exit_code
    except DivergenceError as error:
        if debug:
            raise
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as error:
        if debug:
            raise
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        if debug:
            raise
        print(
            f"{prefix}: internal error: {type(error).__name__}: {one_line(error)} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return 0


def _saved(stop: interrupts.Interrupted) -> str:
    """What an interrupted command left behind, if it said (``stop.saved``)."""
    saved = getattr(stop, "saved", None)
    return f"; {saved}" if saved else ""
