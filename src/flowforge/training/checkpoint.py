"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One safetensors file, ``checkpoint.safetensors``, replaced atomically
(`flowforge.runtime.atomic`): the weights, the optimiser's tensors, the best weights, the random
generators' states and the epoch's sample order as tensors; the optimiser's settings, the
scheduler, the history, the position inside the epoch and the run's settings as JSON in the
file's metadata. Nothing in it is executed on loading (no pickle).

A checkpoint taken after ``k`` steps of an epoch resumes at step ``k + 1`` with the same
order, generator states and running sums, so that a resumed run ends with the weights of an
uninterrupted one, bit for bit, on the same machine and thread count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from flowforge.flows.flow import Flow
from flowforge.runtime import atomic
from flowforge.runtime.files import one_line

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "flowforge-checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def fingerprint(x: Tensor) -> str:
    """A short hash of a tensor's shape, dtype and bytes (to tell whether data changed)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{tuple(x.shape)}{x.dtype}".encode())
    digest.update(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(
    directory: str | Path,
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    state: dict[str, Any],
    best_state: dict[str, Tensor] | None = None,
    tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Write the training state into ``directory/checkpoint.safetensors``.

    ``state`` is JSON (history, position, settings, ...); ``tensors`` are extra tensors
    (such as the epoch's order of samples)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {f"model.{k}": v for k, v in flow.state_dict().items()}
    out["rng.torch"] = torch.get_rng_state()
    out["rng.generator"] = generator.get_state()
    if best_state is not None:
        out.update({f"best.{k}": v for k, v in best_state.items()})
    out.update({f"extra.{k}": v for k, v in (tensors or {}).items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                out[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "format": FORMAT,
        **state,
        "param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "has_best": best_state is not None,
    }
    path = directory / CHECKPOINT
    tensors_out = {k: v.detach().to("cpu").contiguous() for k, v in out.items()}
    with atomic.replacing(path) as temporary:
        save_file(tensors_out, str(temporary), metadata={"flowforge": json.dumps(metadata)})
    return path


def check_storable(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """A one-line `CheckpointError` now, rather than at the first checkpoint, if the
    optimiser's settings or the scheduler's state are not JSON (a checkpoint stores them so;
    a scheduler's functions, such as ``LambdaLR``'s, are left out by torch itself)."""
    parts = {"optimizer": (optimizer, [dict(g, params=[]) for g in optimizer.param_groups])}
    if scheduler is not None:
        parts["scheduler"] = (scheduler, scheduler.state_dict())
    for role, (obj, state) in parts.items():
        try:
            json.dumps(state)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint= cannot store the {role}'s state ({type(obj).__name__}) as JSON "
                f"({one_line(error)}); train without checkpoint=, or use a {role} whose "
                "settings are numbers, strings and lists"
            ) from None


def read(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The metadata and tensors of ``directory/checkpoint.safetensors``; a one-line
    `CheckpointError` if the file is not a readable flowforge checkpoint."""
    path = Path(directory) / CHECKPOINT
    if path.is_symlink() or not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    advice = "delete it to start the run afresh"
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get("flowforge")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} is unreadable ({one_line(error)}); {advice}") from None
    try:
        metadata = json.loads(text) if text else None
    except ValueError:
        metadata = None
    legacy = isinstance(metadata, dict) and "format" not in metadata
    if legacy and {"history", "param_groups", "optimizer_scalars"} <= set(metadata):
        metadata["format"] = FORMAT  # flowforge 0.1: taken at an epoch's end, no settings
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a {FORMAT} checkpoint (from another flowforge version?); {advice}"
        )
    return metadata, tensors


def restore(
    metadata: dict[str, Any],
    tensors: dict[str, Tensor],
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> dict[str, Tensor] | None:
    """Put what `read()` returned back into the training objects; return the best weights
    (or ``None``). Shapes are checked first, so a mismatch is one line."""
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = flow.state_dict()
    if set(model) != set(expected):
        missing, extra = sorted(set(expected) - set(model)), sorted(set(model) - set(expected))
        raise CheckpointError(
            f"the checkpoint's weights do not fit this model (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    for key, value in model.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"the checkpoint's tensor {key!r} has shape {tuple(value.shape)} but the model "
                f"expects {tuple(expected[key].shape)}"
            )
    flow.load_state_dict(model)
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
    if "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    if not metadata["has_best"]:
        return None
    return {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}


def extra_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The extra tensors that `save()` was given."""
    return {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}


__all__ = [
    "CHECKPOINT",
    "CheckpointError",
    "check_storable",
    "extra_tensors",
    "fingerprint",
    "read",
    "restore",
    "save",
]
