"""Variational runs: fit a flow to a target density, then diagnose and plot it."""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flowforge.flows import io
from flowforge.flows.flow import Flow
from flowforge.inference.variational import VariationalHistory, fit_variational
from flowforge.runs.config import (
    VI_DEFAULTS,
    VI_SCHEMA,
    ConfigError,
    read_yaml,
    resolve,
)
from flowforge.runs.directory import (
    _metrics_writer,
    _read_run_config,
    _run_device,
    _start_run,
    read_history,
)
from flowforge.runs.setup import _check_given_once
from flowforge.runtime import interrupts, limits


class CallableTarget:
    """A user's target given as ``module:function``: the function maps ``(N, dim)`` to the
    unnormalised log-density ``(N,)``; its normaliser is unknown."""

    def __init__(self, spec: str, dim: int | None) -> None:
        module_name, _, function_name = spec.partition(":")
        if not module_name or not function_name:
            raise ConfigError(f"a target must be a name or module:function, got {spec!r}")
        if dim is None:
            raise ConfigError(f"target {spec!r} is a function: give its dimension with --dim")
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            message = f"cannot import module {module_name!r} of target {spec!r}: {error}"
            raise ConfigError(message) from None
        finally:
            sys.path.pop(0)
        self.function = getattr(module, function_name, None)
        if not callable(self.function):
            raise ConfigError(f"module {module_name!r} has no function {function_name!r}")
        self.name, self.dim = spec, dim
        self.bounds = ((-4.0, 4.0), (-4.0, 4.0)) if dim == 2 else None
        self._probe()

    def _probe(self, n: int = 4) -> None:
        """Call the function once on a small batch and check what it returns, so that a wrong
        function fails here with one line rather than inside training."""
        limits.check_elements(n * self.dim, f"a test batch of target {self.name!r}")
        z = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(0))
        expected = (
            f"target {self.name!r} must map a tensor (N, {self.dim}) to log-densities, a "
            f"floating tensor of shape (N,), each finite or -inf"
        )
        try:
            with torch.no_grad():
                out = self.function(z)
        except Exception as error:
            raise ConfigError(
                f"target {self.name!r} failed on a test batch of shape ({n}, {self.dim}): "
                f"{type(error).__name__}: {error}"
            ) from None
        if not isinstance(out, torch.Tensor):
            problem = f"it returned a {type(out).__name__!r} object, not a torch.Tensor"
        elif not out.is_floating_point():
            problem = f"it returned a tensor of dtype {out.dtype}"
        elif tuple(out.shape) != (n,):
            problem = f"it returned a tensor of shape {tuple(out.shape)}"
        elif torch.isnan(out).any() or (out == math.inf).any():
            problem = "it returned NaN or +inf"
        else:
            return
        raise ConfigError(f"{expected}; on a batch of shape ({n}, {self.dim}) {problem}")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.function(z)

    def log_normalizer(self) -> float | None:
        return None


def make_target(config: Mapping[str, Any]):
    """The configured target: a name in `flowforge.inference.targets` or ``module:function``."""
    from flowforge.inference import targets

    name = config["target"]
    if ":" in name:
        return CallableTarget(name, config["dim"])
    if name not in targets.TARGETS:
        raise ConfigError(
            f"config value 'target' must be one of {', '.join(targets.TARGETS)} or "
            f"module:function, got {name!r}"
        )
    return targets.get(name) if config["dim"] is None else targets.get(name, dim=config["dim"])


def make_vi_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The checked configuration of a variational run: defaults < file < flags."""
    file_values = read_yaml(config_file) if config_file else {}
    config = resolve(file_values, overrides, defaults=VI_DEFAULTS, schema=VI_SCHEMA)
    _check_given_once(config, file_values, overrides, ("layers", "hidden", "base"))
    if config["dim"] is not None:
        batch = f"a batch of {config['batch_size']:,} draws of dimension {config['dim']:,}"
        limits.check_elements(config["batch_size"] * config["dim"], batch)
    config["model_args"] = {"base": config["base"], **config["model_args"]}
    config["_given"] = sorted(set(file_values) | {k for k, v in (overrides or {}).items() if v})
    return config


def vi_run(config: Mapping[str, Any], out: str | Path) -> tuple[Flow, VariationalHistory]:
    """Fit the configured flow to the configured target by reverse KL; write the run."""
    out = Path(out)
    target = make_target(config)
    flow = _start_run(config, out, target.dim)
    try:
        history = fit_variational(
            flow,
            target,
            steps=config["steps"],
            batch_size=config["batch_size"],
            lr=config["lr"],
            anneal=config["anneal"],
            schedule=config["schedule"],
            clip=config["clip"],
            progress=config["progress"],
            device=config["device"],
            dtype=getattr(torch, config["dtype"]),
            seed=config["seed"],
            callback=_metrics_writer(out),
        )
    finally:
        with interrupts.deferred():
            io.save(flow, out)
    if history.stopped.startswith("interrupted") and interrupts.pending() is not None:
        stop = interrupts.Interrupted(interrupts.pending())
        stop.saved = f"{history.stopped}; model saved"
        raise stop
    if config["plots"]:
        plot_vi_run(out, flow=flow, target=target, records=history.records)
    return flow, history


def read_vi_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration of a variational run; the file is checked as by
    `read_config()`."""
    return _read_run_config(run_dir, vi=True)


def diagnose_run(run_dir: str | Path, n: int = 100_000, seed: int = 0):
    """`flowforge.inference.diagnostics.diagnose()` of a variational run; written to
    ``diagnostics.json``."""
    from flowforge.inference.diagnostics import diagnose

    run_dir = Path(run_dir)
    config = read_vi_config(run_dir)
    flow = io.load(run_dir, device=_run_device(run_dir, config))
    report = diagnose(flow, make_target(config), n=n, seed=seed)
    result = {"target": config["target"], "model": config["model"], **report.as_dict()}
    (run_dir / "diagnostics.json").write_text(json.dumps(result, indent=2) + "\n")
    return report


def plot_vi_run(
    run_dir: str | Path,
    flow: Flow | None = None,
    target: Any = None,
    records: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """The ELBO curve and, for 2-D targets, the target beside q's density and samples."""
    from flowforge import plots  # matplotlib loads only when a figure is drawn

    run_dir = Path(run_dir)
    config = read_vi_config(run_dir)
    flow = flow if flow is not None else io.load(run_dir)
    target = target if target is not None else make_target(config)
    records = records if records is not None else read_history(run_dir)
    folder = run_dir / "plots"
    written = []
    if records:
        written.append(plots.plot_elbo(records, folder / "elbo.png", title=config["target"]))
    if target.dim == 2 and target.bounds is not None:
        title = f"{config['target']}: {config['model']}"
        written.append(
            plots.plot_vi_2d(
                flow, target.log_prob, folder / "density.png", target.bounds, title=title
            )
        )
    return written
