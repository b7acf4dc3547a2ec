"""Density runs: fit a configured model to a dataset, then evaluate, sample and plot it."""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowforge.datasets.base import Dataset, Split
from flowforge.datasets.files import read_csv
from flowforge.flows import io
from flowforge.flows.flow import Flow
from flowforge.runs.config import (
    ConfigError,
)
from flowforge.runs.directory import (
    CONFIG_FILE,
    METRICS_FILE,
    _run_device,
    _start_run,
    read_config,
    read_history,
)
from flowforge.runs.setup import context_dim_of, load_data
from flowforge.runtime import interrupts, limits
from flowforge.training.baselines import GaussianBaseline, LinearGaussianBaseline
from flowforge.training.distributed import launched_rank, restart_count
from flowforge.training.loop import DivergenceError, History, fit
from flowforge.training.objectives import FlowMatching
from flowforge.training.optimizers import adam
from flowforge.training.results import nll_values, report_of, write_metrics
from flowforge.transforms.continuous import ContinuousFlow, solver

# What a resumed run must share with the run it continues: they change the model, the data
# or the optimisation. The others (epochs, lr, clip, patience, checkpointing, divergence
# handling, device, progress, plots, TensorBoard) may change; fit records the changes.
FIXED_ON_RESUME = (
    "data",
    "model",
    "n",
    "data_dir",
    "context_columns",
    "seed",
    "batch_size",
    "dtype",
    "layers",
    "hidden",
    "model_args",
    "weight_decay",
    "adam_betas",
    "adam_eps",
    "schedule",
    "objective",
    "coupling",
    "coupling_reg",
    "sigma_min",
    "ema",
)


def fit_run(
    config: Mapping[str, Any], out: str | Path, resume: bool = False
) -> tuple[Flow, History]:
    """Train the configured model and write the run directory ``out``.

    With ``resume``, training continues from ``out``'s checkpoint; a configuration that
    changes the model, the data or the optimisation (`FIXED_ON_RESUME`) is refused
    with a message naming the options. A signal stops training after the step under way:
    the checkpoint, the model and the metrics are written and
    `flowforge.runtime.interrupts.Interrupted` is raised (no plots); a signal while plotting
    leaves the run whole without its figures. On a divergence beyond the rollbacks the
    model saved is the last good one and `flowforge.training.DivergenceError` is
    raised."""
    out = Path(out)
    resume = resume or restart_count() > 0  # torchrun restarted the workers: go on
    if resume:
        _check_resume(config, out)
    objective = _objective(config)  # refused (a missing extra) before anything is written
    data, shape = load_data(config)
    flow = _start_run(
        config,
        out,
        tuple(data.train.event_shape),
        keep_metrics=resume,
        context_dim=_context_width(data.train),
    )
    try:
        history = fit(
            flow,
            data.train,
            data.val,
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            **_optimizer(config),
            schedule=config["schedule"],
            clip=config["clip"],
            patience=config["patience"],
            progress=config["progress"],
            tensorboard=config["tensorboard"],
            checkpoint=out,
            resume=resume,
            checkpoint_every=config["checkpoint_every"],
            metrics=out / METRICS_FILE,
            divergence_threshold=config["divergence_threshold"],
            rollbacks=config["rollbacks"],
            objective=objective,
            compile=config["compile"],
            precision=config["precision"],
            ema=config["ema"],
            device=config["device"],
            dtype=getattr(torch, config["dtype"]),
            seed=config["seed"],
        )
    except DivergenceError as error:
        if launched_rank() != 0:
            raise
        with interrupts.deferred():
            io.save(flow, out)  # the best or last good weights, never non-finite ones
            write_metrics(error.history, out / METRICS_FILE)
        raise
    if launched_rank() != 0:  # every rank trained the same model: rank 0 writes it
        return flow, history
    with interrupts.deferred():
        io.save(flow, out)
        write_metrics(history, out / METRICS_FILE)
    if history.signal is not None:
        stop = interrupts.Interrupted(history.signal)
        stop.saved = f"{history.stopped}; checkpoint and model saved, continue with --resume"
        raise stop
    if config["plots"]:
        try:
            plot_run(out, flow=flow, data=(data, shape), history=history)
        except interrupts.Interrupted as stop:
            stop.saved = f"model saved, plots skipped (draw them with: flowforge plot {out})"
            raise
    return flow, history


def _objective(config: Mapping[str, Any]) -> str | FlowMatching:
    """The training objective of a run's config."""
    if config["objective"] == "flow-matching":
        return FlowMatching(
            coupling=config["coupling"],
            sigma_min=config["sigma_min"],
            reg=config["coupling_reg"],
        )
    return config["objective"]


def _optimizer(config: Mapping[str, Any]) -> dict[str, Any]:
    """fit's optimiser keywords: its own Adam with ``lr`` and ``weight_decay``, or, where the
    config sets ``adam_betas`` or ``adam_eps``, an Adam (AdamW with weight decay) of those."""
    lr, decay = config["lr"], config["weight_decay"]
    if config["adam_betas"] is None and config["adam_eps"] is None:
        return {"lr": lr, "weight_decay": decay}
    settings = {
        "betas": tuple(config["adam_betas"] or (0.9, 0.999)),
        "eps": config["adam_eps"] or 1e-8,
    }
    return {"optimizer": lambda parameters: adam(parameters, lr, decay, **settings)}


def _check_resume(config: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume ``out`` with options that change its model, data or optimisation."""
    if not (out / CONFIG_FILE).exists():
        return  # nothing to compare with: fit starts afresh if there is no checkpoint either
    saved = read_config(out)
    changed = [key for key in FIXED_ON_RESUME if saved.get(key) != config.get(key)]
    own_adam = config.get("adam_betas") is not None or config.get("adam_eps") is not None
    if own_adam and saved.get("lr") != config.get("lr"):  # its rate lives in the optimiser
        changed.append("lr")
    if changed:
        details = ", ".join(
            f"--{key.replace('_', '-')} {saved.get(key)!r} -> {config.get(key)!r}"
            for key in changed
        )
        raise ConfigError(
            f"cannot resume {out}: {details} would change the run's model, data or "
            "optimisation; resume with its own options (see its config.yaml) or fit to a new "
            "--out"
        )


def _context_width(split: Split) -> int:
    return 0 if split.context is None else split.context.shape[1]


def _check_context(flow: Flow, split: Split, name: str) -> int:
    """The context width of a run's flow, checked against its data's."""
    flow_k, data_k = context_dim_of(flow), _context_width(split)
    if flow_k != data_k:
        raise ValueError(
            f"the run's flow is conditioned on {flow_k} context values but its data {name} "
            f"have {data_k}; was the data file changed after fitting?"
        )
    return flow_k


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """The flow's NLL on a split beside a full-covariance Gaussian and, for toys, the true
    entropy (so NLL - H = KL(p || q)); written to ``eval.json``.

    For data with a context the flow's NLL is the conditional one, ``-log q(x_i | c_i)`` at
    each sample's own context; beside it are a Gaussian linear in the context
    (`LinearGaussianBaseline`, ``conditional_gaussian``) and the full-covariance
    Gaussian of ``x`` alone, which ignores the context."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    data, _ = load_data(config)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    samples = getattr(data, split)
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    context_dim = _check_context(flow, samples, config["data"])
    gaussian_model = GaussianBaseline(data.train)
    nll = {
        "flow": nll_values(flow, samples),
        "gaussian": nll_values(gaussian_model, Split(samples.x, samples.levels)),
    }
    if context_dim:
        nll["conditional_gaussian"] = nll_values(LinearGaussianBaseline(data.train), samples)
    report, gaussian = report_of(nll["flow"], samples), report_of(nll["gaussian"], samples)
    result: dict[str, Any] = {
        "data": config["data"],
        "model": config["model"],
        "split": split,
        "context_dim": context_dim,
        "flow": report.as_dict(),
        "gaussian": gaussian.as_dict(),
        "entropy": data.entropy,
        "kl": None if data.entropy is None else report.nll - data.entropy,
        "gaussian_kl": None if data.entropy is None else gaussian.nll - data.entropy,
    }
    if context_dim:
        result["conditional_gaussian"] = report_of(nll["conditional_gaussian"], samples).as_dict()
    if data.log_prob is not None:
        # KL(p || q) = E_p[log p - log q], estimated on the same points: the paired
        # difference varies far less than the NLL itself, so its standard error is small.
        true_nll = -data.log_prob(samples.x.double()).double()
        for name, values in nll.items():
            gap = values - true_nll
            result[f"{name}_kl_paired"] = {
                "kl": gap.mean().item(),
                "se": gap.std().item() / math.sqrt(len(gap)),
            }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_evaluation(result: Mapping[str, Any]) -> str:
    """The table that ``flowforge eval`` prints."""
    discrete = result["flow"]["bits_per_dim"] is not None
    header = f"{'model':<22} {'NLL (nats)':>12} {'s.e.':>8}"
    header += f" {'bits/dim':>9}" if discrete else ""
    header += f" {'NLL - H(p)':>11}" if result["entropy"] is not None else ""
    paired = "flow_kl_paired" in result
    header += f" {'KL(p||q), paired':>17} {'s.e.':>7}" if paired else ""
    context_dim = result.get("context_dim") or 0
    title = f"{result['data']}, {result['split']} split, {result['flow']['n']} samples"
    plural = "s" if context_dim != 1 else ""
    title += f", each with a context of {context_dim} value{plural}" if context_dim else ""
    lines = [title, header]
    if context_dim:
        rows = [(f"{result['model']} q(x|c)", "flow", result["kl"])]
        rows.append(("linear-Gaussian p(x|c)", "conditional_gaussian", None))
    else:
        rows = [(result["model"], "flow", result["kl"])]
    rows.append(("full-covariance Gaussian", "gaussian", result["gaussian_kl"]))
    for name, key, kl in rows:
        report = result[key]
        line = f"{name:<24} {report['nll']:>12.4f} {report['nll_se']:>8.4f}"
        line += f" {report['bits_per_dim']:>9.4f}" if discrete else ""
        line += f" {kl:>11.4f}" if kl is not None else ""
        if paired:
            line += f" {result[key + '_kl_paired']['kl']:>17.4f}"
            line += f" {result[key + '_kl_paired']['se']:>7.4f}"
        lines.append(line)
    if result["entropy"] is not None:
        lines.append(f"{'true entropy H(p)':<24} {result['entropy']:>12.4f}")
    if paired:
        lines.append("KL(p||q), paired: mean of log p(x) - log q(x) over the same test points")
    if context_dim:
        lines.append(
            "conditional NLL: -log q(x|c) at each sample's own context; the full-covariance "
            "Gaussian ignores the context"
        )
    return "\n".join(lines)


def sample_run(
    run_dir: str | Path,
    n: int,
    temperature: float = 1.0,
    seed: int | None = None,
    context: np.ndarray | torch.Tensor | None = None,
    method: str | None = None,
    steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """``n`` samples of a trained run, in model space (``[0, 1]`` for images).

    For a continuous run, ``method`` and ``steps`` set the ODE solve of the sampling pass
    (e.g. ``"rk4"`` at 8 fixed steps; see `flowforge.transforms.solver`), and ``log``
    receives the number of field evaluations it took; other runs refuse them.

    A conditional run needs a ``context``: one context ``(k,)`` gives ``n`` samples
    ``(n, D)`` of ``q(x | c)``; ``m`` contexts ``(m, k)`` give ``n`` samples for each,
    ``(n, m, D)``. An unconditional run takes none. ``n`` must be positive (and
    ``temperature`` finite and >= 0, as `flowforge.Flow.sample()` checks); samples above
    `flowforge.runtime.limits.max_elements()` numbers are refused before they are drawn."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    if seed is not None:
        torch.manual_seed(seed)
    flow = io.load(run_dir)
    if method is None and steps is None:
        solving = contextlib.nullcontext()
    elif any(isinstance(m, ContinuousFlow) for m in flow.modules()):
        solving = solver(flow, method=method, steps=steps)
    else:
        raise ValueError(
            f"run {run_dir} solves no ODE: method and steps apply to continuous runs (--model cnf)"
        )
    with solving:
        samples = _sample(flow, run_dir, n, temperature, context)
    layers = [m for m in flow.modules() if isinstance(m, ContinuousFlow)]
    if layers and log is not None:
        evaluations = sum(layer.nfe["forward"] for layer in layers)
        how = f"{method or layers[0].method}" + (f" at {steps} steps" if steps else "")
        log(f"sampling took {evaluations} evaluations of the vector field ({how})")
    return samples


def _sample(
    flow: Flow, run_dir: str | Path, n: int, temperature: float, context: object
) -> np.ndarray:
    k = context_dim_of(flow)
    if k and context is None:
        raise ValueError(
            f"run {run_dir} is conditional on a context of {k} values; give one "
            f"(--context with {k} comma-separated numbers, or --context-file)"
        )
    if not k and context is not None:
        raise ValueError(f"run {run_dir} is not conditional; it takes no context")
    size = math.prod(flow.event_shape)
    shape = tuple(flow.event_shape)
    if context is None:
        limits.check_elements(n * size, f"{n:,} samples of shape {shape}")
        return flow.sample(n, temperature=temperature).cpu().numpy()
    values = torch.as_tensor(np.asarray(context, dtype=np.float64)).to(flow.dtype)
    single = values.dim() == 1
    values = values.reshape(1, -1) if single else values
    if values.dim() != 2 or values.shape[1] != k or len(values) == 0:
        raise ValueError(
            f"run {run_dir} needs contexts of {k} values (shape ({k},) or (m, {k})), got "
            f"shape {tuple(np.shape(context))}"
        )
    if not torch.isfinite(values).all():
        raise ValueError("the context contains NaN or infinite values")
    count = f"{n:,} samples of shape {shape} for each of {len(values):,} contexts"
    limits.check_elements(len(values) * n * size, count)
    samples = flow.sample(n, context=values, temperature=temperature)
    return (samples[:, 0] if single else samples).cpu().numpy()


def parse_context(text: str) -> np.ndarray:
    """One context vector ``(k,)`` from numbers separated by commas (or spaces)."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    try:
        values = np.array([float(item) for item in items], dtype=np.float64)
    except ValueError:
        values = np.array([])
    if len(values) == 0 or not np.isfinite(values).all():
        raise ValueError(
            f"--context must be finite numbers separated by commas, such as 0.1,0.2, got {text!r}"
        )
    return values


def read_context_file(path: str | Path) -> np.ndarray:
    """Contexts ``(m, k)`` (or one ``(k,)``) from a ``.npy`` file (read without pickle) or a
    ``.csv`` file of numbers (a header line is allowed)."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"a context file must be .npy or .csv, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"context file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return read_csv(path)[0]
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = (str(error).splitlines() or ["unreadable"])[0]
        raise ValueError(f"{path} is not a usable .npy file: {reason}") from None
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
        raise ValueError(f"{path} must hold an array of numbers")
    return values


def plot_run(
    run_dir: str | Path,
    flow: Flow | None = None,
    data: tuple[Dataset, tuple[int, ...]] | None = None,
    history: History | list[dict[str, Any]] | None = None,
    temperature: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the run's figures into ``run_dir/plots`` and return their paths.

    For a conditional run the density, sample and layer figures (of an unconditional
    ``q(x)``) are skipped, saying so through ``log``; ``conditional_samples.png`` shows
    ``q(x | c)`` for a few test contexts instead
    (`flowforge.plots.plot_conditional_samples()`)."""
    from flowforge import plots  # matplotlib loads only when a figure is drawn

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    flow = flow if flow is not None else io.load(run_dir)
    data, shape = data if data is not None else load_data(config)
    history = history.epochs if isinstance(history, History) else history
    history = history if history is not None else read_history(run_dir)
    folder = run_dir / "plots"
    written = []
    if history:
        written.append(plots.plot_losses(history, folder / "loss.png", title=config["data"]))
    torch.manual_seed(config["seed"])
    if data.train.context is not None:
        _check_context(flow, data.test, config["data"])
        if log is not None:
            log(
                "conditional run: no density, sample or layer figures of q(x) (they need an "
                "unconditional flow); drawing samples of q(x|c) for a few test contexts"
            )
        written.append(
            plots.plot_conditional_samples(
                flow,
                data.train,
                data.test,
                folder / "conditional_samples.png",
                temperature=temperature,
                title=f"{Path(config['data']).name}: {config['model']} q(x|c)",
            )
        )
        return written
    test = data.test.x.to(flow.dtype)
    if data.train.dim == 2:
        written.append(
            plots.plot_density_2d(flow, test, folder / "density.png", true_log_prob=data.log_prob)
        )
        written.append(plots.plot_samples_2d(flow, test, folder / "samples.png"))
        written.append(plots.plot_layers_2d(flow, test[:2000], folder / "layers.png"))
    elif data.train.discrete:
        written.append(
            plots.plot_samples_images(
                flow, folder / "samples.png", n=64, temperature=temperature, image_shape=shape
            )
        )
        images = data.test.dequantize(data.test.x[:64]).reshape(-1, *shape)
        written.append(plots.plot_image_grid(images, folder / "data.png", title="test data"))
        for cold in (0.7, 0.0):
            written.append(
                plots.plot_samples_images(
                    flow,
                    folder / f"samples-T{cold:g}.png",
                    n=64,
                    temperature=cold,
                    image_shape=shape,
                )
            )
        pairs = data.test.dequantize(data.test.x[:12]).to(flow.dtype)
        written.append(
            plots.plot_interpolation(
                flow, pairs[0::2], pairs[1::2], folder / "interpolation.png", image_shape=shape
            )
        )
    return written
