"""Saving and loading flows without pickle: weights in safetensors, architecture in JSON.

A saved model is two files in a directory: ``model.json`` (the builder's name and arguments
from ``flow.config``, the dtype, the flowforge version) and ``model.safetensors`` (the state
dict). Loading rebuilds the architecture from the JSON and fills in the weights, so no code
from the files is ever executed. Training checkpoints are one safetensors file whose
metadata holds the JSON part (optimiser settings, history), written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .flow import Flow

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
FORMAT = "flowforge-model/1"


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None):
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def load(directory: str | Path, device: str | torch.device | None = None) -> Flow:
    """Rebuild a saved flow from ``directory`` (a run directory or a :func:`save` target)."""
    from . import models

    directory = Path(directory)
    description_path, weights_path = directory / MODEL_JSON, directory / MODEL_WEIGHTS
    missing = [p.name for p in (description_path, weights_path) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{directory} holds no saved flow: missing {', '.join(missing)} "
            f"(expected the output of flowforge fit or flowforge.save)"
        )
    description = json.loads(description_path.read_text())
    if description.get("format") != FORMAT or not isinstance(description.get("config"), dict):
        raise ValueError(f"{description_path} is not a flowforge model description ({FORMAT})")
    dtype = getattr(torch, description.get("dtype", "float32"), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{description_path}: unknown dtype {description.get('dtype')!r}")
    flow = models.build(description["config"]).to(dtype)
    flow.load_state_dict(load_file(str(weights_path)))
    return flow.to(device or "cpu").eval()


def save_checkpoint(
    directory: Path,
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: dict[str, Any],
    best_state: dict[str, Tensor] | None,
    generator: torch.Generator | None = None,
) -> Path:
    """The training state at the end of an epoch, in one atomically replaced file: weights,
    optimiser and scheduler state, history, best weights, and the random generators' states
    (so a resumed run continues exactly as an uninterrupted one would)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in flow.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "history": history,
        "param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "has_best": best_state is not None,
    }
    path = directory / CHECKPOINT
    _atomic_save(tensors, path, {"flowforge": json.dumps(metadata)})
    return path


def load_checkpoint(
    directory: Path,
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; return the history and the best weights."""
    path = directory / CHECKPOINT
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["flowforge"])
    tensors = load_file(str(path))
    flow.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in metadata["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})
    if scheduler is not None and metadata["scheduler"] is not None:
        scheduler.load_state_dict(metadata["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    best = None
    if metadata["has_best"]:
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return {"history": metadata["history"], "best_state": best}
