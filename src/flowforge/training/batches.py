r"""Where a run's mini-batches come from, and how a resumed run gets the same ones.

`fit` takes four kinds of training data; each becomes a `Batches`:

- a tensor or a `flowforge.datasets.Split` (`SplitBatches`): the epoch's order is a
  permutation drawn from the run's generator, and discrete data are dequantised afresh
  every batch;
- a map-style ``torch.utils.data.Dataset`` (`DatasetBatches`): the same permutation, the
  items of each batch read with ``dataset[i]`` and stacked with torch's ``default_collate``,
  so that only one batch is in memory;
- a ``DataLoader``, or an ``IterableDataset`` that streams (`LoaderBatches`): the loader's
  batches as it yields them, its batch size and shuffling its own.

In a data-parallel run (`flowforge.training.distributed`) a step trains on a global batch
split between the ranks. A map-style dataset is sharded as it is read: each rank reads only
its own part of the global batch (``shard``), so that no process reads more than its share
(where the objective draws nothing for the batch, as the likelihood; flow matching's draws
and pairing need the global batch on every rank). A ``DataLoader`` whose sampler is a
``DistributedSampler`` gives each rank its own batches already: they are the rank's part
(``local``), and the loop calls the sampler's ``set_epoch`` at every epoch. Any other data is
read whole on every rank, each training on its slice.

An item or batch is a tensor ``x`` or a tuple ``(x, ...)``; a conditional flow takes the
second element as the context, an unconditional one ignores what follows ``x`` (a label).
Data from a dataset or a loader are used as they come (dequantise them there).

A checkpoint inside an epoch resumes at the next step with the same batches: a permutation
is stored; a loader is *replayed*: the random states it draws from (torch's global
generator, and the loader's or its sampler's own generator) are stored as they were when the
epoch's iterator was made, restored on resume, and the batches already trained are read
again and skipped. That is exact when the loader's batches follow from those states
(``shuffle=True``, worker seeds, a file read in order); the last trained batch's
fingerprint is stored too, and a replay that yields another batch is refused in one line.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data import default_collate as collate

from flowforge.datasets.base import Split
from flowforge.flows.flow import Flow
from flowforge.training.checkpoint import CheckpointError, fingerprint


class Batches(ABC):
    """An epoch's mini-batches, one `next()` per training step."""

    discrete = False  # whether the data are discrete (reported in bits/dim)
    local = False  # whether a batch is this rank's part of the global batch, not all of it

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int | None:
        """Steps in an epoch, or None where the loader cannot say (an unsized stream)."""

    @abstractmethod
    def start(self, generator: torch.Generator, epoch: int = 0) -> None:
        """Begin epoch ``epoch`` (draw its order, or make the loader's iterator)."""

    @abstractmethod
    def next(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None] | None:
        """The ``step``-th batch ``(x, context)`` of the epoch, or None after its last."""

    @abstractmethod
    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """What a checkpoint inside an epoch keeps: JSON and tensors."""

    @abstractmethod
    def restore(self, state: dict[str, Any], tensors: dict[str, Tensor], step: int) -> None:
        """Resume the epoch of `state` after its first ``step`` batches."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a resumed run must find unchanged (sizes, fingerprints, classes)."""

    @abstractmethod
    def finish(self) -> None:
        """End the epoch."""


class SplitBatches(Batches):
    """Batches of a `Split`'s rows in a permutation drawn from the run's generator."""

    def __init__(self, split: Split, batch_size: int) -> None:
        self.split, self.batch_size = split, batch_size
        self.order: Tensor | None = None
        self.discrete = split.discrete

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def start(self, generator: torch.Generator, epoch: int = 0) -> None:
        self.order = torch.randperm(len(self.split), generator=generator)

    def indices(self, step: int) -> Tensor | None:
        if step >= self.steps_per_epoch:
            return None
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]

    def next(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None] | None:
        index = self.indices(step)
        if index is None:
            return None
        split = self.split
        x = split.dequantize(split.x[index], generator)
        return x, (None if split.context is None else split.context[index])

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {}, {"order": self.order}

    def restore(self, state: dict[str, Any], tensors: dict[str, Tensor], step: int) -> None:
        self.order = tensors["order"]

    def describe(self) -> dict[str, Any]:
        return describe_data(self.split)

    def finish(self) -> None:
        self.order = None


class DatasetBatches(SplitBatches):
    """Batches of a map-style ``Dataset``'s items, read one batch at a time; with ``shard``
    (a rank's part of ``n`` items, `Workers.shard`), only this rank's part of each batch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        conditional: bool,
        shard: Callable[[int], slice] | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.conditional = dataset, batch_size, conditional
        self.shard, self.local = shard, shard is not None
        self.order = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def start(self, generator: torch.Generator, epoch: int = 0) -> None:
        self.order = torch.randperm(len(self.dataset), generator=generator)

    def next(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None] | None:
        index = self.indices(step)
        if index is None:
            return None
        return self.read(index if self.shard is None else index[self.shard(len(index))])

    def read(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The items ``index``, stacked; an empty part as an empty batch of the item's shape."""
        if len(index) == 0:
            x, context = self.read(self.order[:1])
            return x[:0], None if context is None else context[:0]
        return unpack(collate([self.dataset[i] for i in index.tolist()]), self.conditional)

    def describe(self) -> dict[str, Any]:
        return {"n": len(self.dataset), "type": type(self.dataset).__qualname__}


class LoaderBatches(Batches):
    """The batches of a ``DataLoader`` as it yields them; a resume replays the epoch."""

    def __init__(self, loader: DataLoader, conditional: bool) -> None:
        self.loader, self.conditional = loader, conditional
        self.local = isinstance(loader.sampler, DistributedSampler)
        self.epoch = 0
        self.iterator: Iterator[Any] | None = None
        self.states: dict[str, Tensor] = {}  # the random states the epoch's iterator began from
        self.last: Tensor | None = None  # the last batch handed out (fingerprinted on save)
        # whether a resume compares the replayed batch with the stored fingerprint (rank 0's
        # batch: another rank of a DistributedSampler's cannot)
        self.verify = True

    @property
    def steps_per_epoch(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:  # an IterableDataset without __len__
            return None

    def generators(self) -> dict[str, torch.Generator]:
        """The loader's own generators (besides torch's global one), by name."""
        found = {"loader": getattr(self.loader, "generator", None)}
        found["sampler"] = getattr(getattr(self.loader, "sampler", None), "generator", None)
        return {name: g for name, g in found.items() if isinstance(g, torch.Generator)}

    def start(self, generator: torch.Generator, epoch: int = 0) -> None:
        self.epoch = epoch
        if self.local:  # the DistributedSampler's order is drawn from its seed and the epoch
            self.loader.sampler.set_epoch(epoch)
        self.states = {"rng.torch": torch.get_rng_state()}
        self.states.update({f"rng.{k}": g.get_state() for k, g in self.generators().items()})
        self.iterator = iter(self.loader)

    def next(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None] | None:
        try:
            batch = next(self.iterator)
        except StopIteration:
            return None
        x, context = unpack(batch, self.conditional)
        self.last = x
        return x, context

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        last = None if self.last is None else fingerprint(self.last)
        return {"last_batch": last, "epoch": self.epoch}, dict(self.states)

    def restore(self, state: dict[str, Any], tensors: dict[str, Tensor], step: int) -> None:
        now = torch.get_rng_state()
        torch.set_rng_state(tensors["rng.torch"])
        for name, g in self.generators().items():
            if f"rng.{name}" in tensors:
                g.set_state(tensors[f"rng.{name}"])
        self.start(torch.Generator(), state.get("epoch", 0))
        for _ in range(step):  # read again what was trained on, and skip it
            if self.next(0, torch.Generator()) is None:
                break
        replayed = None if self.last is None else fingerprint(self.last)
        if self.verify and replayed != state.get("last_batch"):
            raise CheckpointError(
                f"cannot resume inside an epoch: replaying the DataLoader did not give the "
                f"batch trained at step {step} (its order does not follow torch's generators); "
                "start a new run, or checkpoint only at epochs' ends (checkpoint_every=None)"
            )
        torch.set_rng_state(now)

    def describe(self) -> dict[str, Any]:
        dataset = self.loader.dataset
        return {"type": type(dataset).__qualname__, "batches": self.steps_per_epoch}

    def finish(self) -> None:
        self.iterator, self.last = None, None


def unpack(batch: Any, conditional: bool) -> tuple[Tensor, Tensor | None]:
    """``(x, context)`` of a batch: a tensor, or a tuple / list whose first element is ``x``
    and, for a conditional flow, whose second is the context."""
    if isinstance(batch, Tensor):
        x, rest = batch, ()
    elif isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        x, rest = batch[0], tuple(batch[1:])
    else:
        raise TypeError(
            f"a batch must be a tensor x or a tuple (x, ...) of tensors, got a "
            f"{type(batch).__name__}; return x (or x, context) from the dataset's __getitem__"
        )
    if not conditional:
        return x, None
    if not rest or not isinstance(rest[0], Tensor):
        raise ValueError(
            "the flow is conditional but the batches have no context; make each item (x, context)"
        )
    context = rest[0]
    return x, context.unsqueeze(-1) if context.ndim == 1 else context


def in_memory(data: Any) -> Any:
    """A tensor as a `Split`; a `Split`, a torch ``Dataset`` or ``DataLoader`` (or None) as
    it is; anything else a one-line ``TypeError``."""
    if data is None or isinstance(data, Split | Dataset | DataLoader):
        return data
    if isinstance(data, Tensor):
        return Split(data)
    raise TypeError(
        "expected a Tensor, a flowforge.datasets.Split, a torch Dataset or a DataLoader, got "
        f"{type(data).__name__}"
    )


def describe_data(data: Any) -> dict[str, Any] | None:
    """What a resumed run must find unchanged in held-out ``data``: a split's size and
    fingerprint, a dataset's or loader's class."""
    if data is None:
        return None
    if isinstance(data, Split):
        parts = [data.x] + ([data.context] if data.context is not None else [])
        return {"n": len(data), "fingerprint": "-".join(fingerprint(t) for t in parts)}
    dataset = data.dataset if isinstance(data, DataLoader) else data
    return {"type": type(dataset).__qualname__}


def check_batch(flow: Flow, x: Tensor, context: Tensor | None) -> None:
    """One-line errors for a batch read from a dataset or loader that the flow cannot take."""
    if tuple(x.shape[1:]) != tuple(flow.event_shape):
        raise ValueError(
            f"a batch from the data has samples of shape {tuple(x.shape[1:])} but the flow "
            f"models {tuple(flow.event_shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"a batch from the data holds {x.dtype} values; expected floats")
    if not torch.isfinite(x).all():
        raise ValueError("a batch from the data holds NaN or infinite values; expected finite")
    if context is not None and len(context) != len(x):
        raise ValueError(f"a batch has {len(x)} samples but {len(context)} contexts")


def batches_of(
    data: Any,
    batch_size: int,
    conditional: bool,
    shard: Callable[[int], slice] | None = None,
) -> Batches:
    """The `Batches` of ``data``: a tensor, a `Split`, a map-style ``Dataset`` (only this
    rank's part of each batch read, with ``shard``), an ``IterableDataset`` (read in batches
    of ``batch_size``) or a ``DataLoader``."""
    if isinstance(data, Tensor):
        return SplitBatches(Split(data), batch_size)
    if isinstance(data, Split):
        return SplitBatches(data, batch_size)
    if isinstance(data, DataLoader):
        return LoaderBatches(data, conditional)
    if isinstance(data, IterableDataset):
        return LoaderBatches(DataLoader(data, batch_size=batch_size), conditional)
    if isinstance(data, Dataset):
        try:
            len(data)
        except TypeError:
            raise TypeError(
                f"a map-style Dataset needs __len__; {type(data).__name__} has none (make it "
                "an IterableDataset to stream it)"
            ) from None
        return DatasetBatches(data, batch_size, conditional, shard)
    raise TypeError(
        "expected a Tensor, a flowforge.datasets.Split, a torch Dataset or a DataLoader, got "
        f"{type(data).__name__}"
    )


__all__ = [
    "Batches",
    "DatasetBatches",
    "LoaderBatches",
    "SplitBatches",
    "batches_of",
    "check_batch",
    "describe_data",
    "in_memory",
    "unpack",
]
