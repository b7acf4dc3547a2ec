"""What training gives back and held-out evaluation: `History`, `Report`,
`evaluate()`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from flowforge.datasets.base import Split
from flowforge.flows.flow import Flow
from flowforge.runtime import atomic
from flowforge.training.batches import check_batch, in_memory, unpack
from flowforge.training.distributed import Workers


@dataclass
class History:
    """What `fit()` did: one dict per epoch (``epoch``, ``train_nll``, ``val_nll``, ``lr``,
    ``seconds``, and ``train_bpd`` / ``val_bpd`` for discrete data), the best epoch, why it
    stopped, and the events on the way (rollbacks, resumes, settings changed on resume)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_nll: float | None = None
    stopped: str = "finished"
    events: list[dict[str, Any]] = field(default_factory=list)  # rollbacks, resumes, changes
    signal: int | None = None  # the signal that stopped training, if one did

    def __len__(self) -> int:
        return len(self.epochs)


@dataclass
class Report:
    r"""Held-out likelihood: mean NLL in nats per sample with its standard error, and for
    discrete data bits/dim (see `Split`)."""

    nll: float
    nll_se: float
    n: int
    dim: int
    bits_per_dim: float | None = None

    @property
    def nll_per_dim(self) -> float:
        return self.nll / self.dim

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"NLL {self.nll:.4f} +- {self.nll_se:.4f} nats ({self.n} samples, {self.dim} dims)"
        if self.bits_per_dim is not None:
            text += f", {self.bits_per_dim:.4f} bits/dim"
        return text


def as_split(data: Split | Tensor) -> Split:
    """A `Split` from a split or a plain tensor of continuous samples."""
    if isinstance(data, Split):
        return data
    if isinstance(data, Tensor):
        return Split(data)
    raise TypeError(f"expected a Tensor or a flowforge.datasets.Split, got {type(data).__name__}")


def _check_data(flow: Flow, split: Split, name: str) -> None:
    if tuple(split.event_shape) != tuple(flow.event_shape):
        raise ValueError(
            f"{name} samples have shape {tuple(split.event_shape)} but the flow models "
            f"{tuple(flow.event_shape)}; flatten images for vector flows (Dataset.flatten())"
        )
    if not torch.isfinite(split.x).all():
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")


@torch.no_grad()
def nll_values(
    model: Flow | Any,
    data: Split | Tensor,
    batch_size: int = 4096,
    seed: int = 0,
    part: tuple[int, int] = (0, 1),
) -> Tensor:
    """``-log q(x_i)`` for every sample of ``data`` (float64, ``(N,)``), in batches.

    ``model`` is anything with ``log_prob``; discrete data are dequantised with noise drawn
    from ``seed``, so the values are reproducible. ``part=(r, n)`` scores only the batches
    ``r, r + n, ...`` (rank r of n), drawing every batch's noise all the same.
    """
    dtype = getattr(model, "dtype", torch.float32)
    device = getattr(model, "device", torch.device("cpu"))
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    nll = []
    for number, (x, context) in enumerate(_batches(model, data, batch_size, seed)):
        if number % part[1] != part[0]:
            continue
        x = x.to(device, dtype)
        if context is not None:
            context = context.to(device, dtype)
        log_p = model.log_prob(x) if context is None else model.log_prob(x, context)
        nll.append(-log_p.double().cpu())
    if was_training:
        model.train()
    return torch.cat(nll) if nll else torch.zeros(0, dtype=torch.float64)


def evaluate(
    model: Flow | Any,
    data: Split | Tensor,
    batch_size: int = 4096,
    seed: int = 0,
    workers: Workers | None = None,
) -> Report:
    """Mean NLL of ``model`` on ``data`` in nats, with its standard error; bits/dim for
    discrete data (dequantised with noise from ``seed``). With the ``workers`` of a
    distributed run, each rank scores every N-th batch (the same noise as one process draws)
    and the sums are all-reduced: every rank gets the whole split's report."""
    data = in_memory(data)
    if workers is None:
        return report_of(nll_values(model, data, batch_size, seed), data, model)
    values = nll_values(model, data, batch_size, seed, part=(workers.rank, workers.world_size))
    n, total, squares = workers.all_sum(len(values), values.sum().item(), (values**2).sum().item())
    mean = total / n
    variance = max(squares - n * mean**2, 0.0) / (n - 1) if n > 1 else math.nan
    return _report(mean, math.sqrt(variance / n), int(n), data, model)


def _batches(
    model: Any, data: Any, batch_size: int, seed: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(x, context)`` in batches: a split's rows, dequantised with noise from ``seed``; a
    dataset's or a loader's batches as they come."""
    if isinstance(data, Dataset | DataLoader):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size)
        conditional = getattr(model, "context_dim", 0) != 0
        for batch in loader:
            x, context = unpack(batch, conditional)
            if isinstance(model, Flow):
                check_batch(model, x, context)
            yield x, context
        return
    split = as_split(data)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(split), batch_size):
        x = split.dequantize(split.x[start : start + batch_size], generator)
        context = None if split.context is None else split.context[start : start + batch_size]
        yield x, context


def report_of(values: Tensor, data: Split | Any, model: Any = None) -> Report:
    """The `Report` of per-sample NLL ``values`` ``(N,)`` computed on ``data`` (a `Split`,
    or a dataset or loader of ``model``'s samples)."""
    mean = values.mean().item()
    se = (values.std().item() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return _report(mean, se, len(values), data, model)


def _report(mean: float, se: float, n: int, data: Split | Any, model: Any) -> Report:
    """The `Report` of a mean NLL: the dimensions are a split's, else the model's; bits/dim
    for a split of discrete data."""
    if isinstance(data, Split):
        bpd = data.bits_per_dim(mean) if data.discrete else None
        return Report(nll=mean, nll_se=se, n=n, dim=data.dim, bits_per_dim=bpd)
    dim = math.prod(getattr(model, "event_shape", ()))
    return Report(nll=mean, nll_se=se, n=n, dim=dim)


def write_records(records: list[dict[str, Any]], path: str | Path) -> None:
    """One JSON line per record, replacing ``path`` atomically."""
    atomic.write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def write_metrics(history: History, path: str | Path) -> None:
    """One JSON line per epoch of ``history``, replacing ``path`` atomically."""
    write_records(history.epochs, path)
