"""`fit` on a map-style Dataset, a DataLoader and a streamed IterableDataset (issue 38)."""

from __future__ import annotations

import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import flowforge as ff
from flowforge.training.checkpoint import CheckpointError

COVARIANCE = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
ENTROPY = 0.5 * math.log(torch.det(2 * math.pi * math.e * COVARIANCE).item())


def gaussian(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(COVARIANCE).T


def small_flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.models.realnvp(dim=2, layers=4, hidden=(16, 16))


def same_weights(a: ff.Flow, b: ff.Flow) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


OPTIONS = dict(epochs=3, batch_size=100, lr=3e-3, progress=False, seed=2)


def test_a_map_style_dataset_trains_exactly_as_its_tensor():
    """The same permutation from the run's generator, the items stacked: the same weights."""
    x, val = gaussian(1000, 0), gaussian(300, 1)
    tensor_run, dataset_run = small_flow(), small_flow()
    ff.fit(tensor_run, x, val, **OPTIONS)
    history = ff.fit(dataset_run, TensorDataset(x), TensorDataset(val), **OPTIONS)
    assert same_weights(tensor_run, dataset_run)
    assert history.epochs[-1]["val_nll"] == pytest.approx(
        ff.evaluate(tensor_run, val).nll, rel=1e-6
    )


def test_a_dataloader_trains_to_the_tensor_paths_nll():
    """Another shuffle, the same model and rate: both end within 0.05 nats of the entropy
    (the tensor path's own accuracy in test_training) on 4,000 test points (s.e. ~0.02)."""
    x, val, test = gaussian(4000, 0), gaussian(1000, 1), gaussian(4000, 2)
    options = dict(epochs=15, lr=3e-3, progress=False)
    tensor_run, loader_run = small_flow(), small_flow()
    ff.fit(tensor_run, x, val, batch_size=128, **options)
    loader = DataLoader(TensorDataset(x), batch_size=128, shuffle=True)
    ff.fit(loader_run, loader, DataLoader(TensorDataset(val), batch_size=500), **options)
    for run in (tensor_run, loader_run):
        assert abs(ff.evaluate(run, test).nll - ENTROPY) < 0.05
    assert ff.evaluate(loader_run, DataLoader(TensorDataset(test), 999)).nll == pytest.approx(
        ff.evaluate(loader_run, test).nll, rel=1e-6
    )


class Shards(IterableDataset):
    """Rows streamed from ``.npy`` files, one memory-mapped file at a time, in order; it
    counts the most rows it ever held."""

    def __init__(self, paths, sized: bool) -> None:
        self.paths, self.sized, self.most_rows_held = paths, sized, 0

    def __iter__(self):
        for path in self.paths:
            shard = np.load(path, mmap_mode="r")
            self.most_rows_held = max(self.most_rows_held, len(shard))
            for row in shard:
                yield torch.from_numpy(np.array(row, dtype=np.float32))

    def __len__(self) -> int:
        if not self.sized:
            raise TypeError("a stream of unknown length")
        return sum(len(np.load(p, mmap_mode="r")) for p in self.paths)


def write_shards(directory, n_files: int = 8, rows: int = 500) -> list:
    paths = []
    for number in range(n_files):
        path = directory / f"part-{number}.npy"
        np.save(path, gaussian(rows, 10 + number).numpy())
        paths.append(path)
    return paths


def test_a_dataset_streamed_from_files_is_never_loaded_whole(tmp_path):
    stream = Shards(write_shards(tmp_path), sized=False)
    flow = small_flow()
    history = ff.fit(flow, stream, epochs=6, batch_size=128, lr=3e-3, schedule=None, progress=False)
    assert stream.most_rows_held == 500  # of 4,000
    assert len(history) == 6 and history.epochs[-1]["train_nll"] < history.epochs[0]["train_nll"]
    assert abs(ff.evaluate(flow, gaussian(4000, 2)).nll - ENTROPY) < 0.05


def test_a_stream_of_unknown_length_needs_a_schedule_that_does_not_count_steps(tmp_path):
    stream = Shards(write_shards(tmp_path, 2), sized=False)
    with pytest.raises(ValueError, match="the cosine schedule needs the number of steps"):
        ff.fit(small_flow(), stream, epochs=1, progress=False)
    sized = Shards(write_shards(tmp_path, 2), sized=True)  # with __len__: the cosine plan
    history = ff.fit(small_flow(), sized, epochs=2, batch_size=100, progress=False)
    assert history.epochs[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


class SignalAfter(Dataset):
    """A dataset that sends this process SIGINT when its ``at``-th item is read (as Ctrl-C
    would, mid-epoch); ``at=None`` never does."""

    def __init__(self, x: torch.Tensor, at: int | None) -> None:
        self.x, self.at, self.reads = x, at, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.x[index]


@pytest.mark.parametrize("kind", ["dataset", "loader"])
def test_a_run_interrupted_mid_epoch_resumes_bit_identically(tmp_path, kind):
    """SIGINT in epoch 2's fourth batch; the resume (the loader replayed to step 4) ends
    with the uninterrupted run's weights."""
    x = gaussian(1000, 0)

    def data(at):
        dataset = SignalAfter(x, at)
        if kind == "dataset":
            return dataset
        return DataLoader(dataset, batch_size=100, shuffle=True)

    straight = small_flow()
    ff.fit(straight, data(None), **OPTIONS)
    stopped = small_flow()
    history = ff.fit(stopped, data(1000 + 350), checkpoint=tmp_path, **OPTIONS)
    assert history.stopped.startswith("interrupted")
    metadata, _ = ff.training.checkpoint.read(tmp_path)
    assert (metadata["position"]["epoch"], metadata["position"]["step"]) == (1, 4)
    resumed = small_flow()
    history = ff.fit(resumed, data(None), checkpoint=tmp_path, resume=True, **OPTIONS)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3]
    assert same_weights(straight, resumed)


class PythonShuffled(IterableDataset):
    """Rows in an order from Python's own random module: not replayable from torch's state."""

    def __init__(self, x: torch.Tensor, at: int | None) -> None:
        self.x, self.at, self.reads = x, at, 0

    def __iter__(self):
        order = list(range(len(self.x)))
        random.shuffle(order)
        for index in order:
            self.reads += 1
            if self.reads == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield self.x[index]

    def __len__(self) -> int:
        return len(self.x)


def test_a_loader_that_cannot_be_replayed_is_refused_on_resume(tmp_path):
    x = gaussian(1000, 0)
    ff.fit(small_flow(), PythonShuffled(x, 250), checkpoint=tmp_path, **OPTIONS)
    with pytest.raises(CheckpointError, match="replaying the DataLoader did not give the batch"):
        ff.fit(small_flow(), PythonShuffled(x, None), checkpoint=tmp_path, resume=True, **OPTIONS)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (lambda i: torch.zeros(3), r"samples of shape \(3,\) but the flow models \(2,\)"),
        (lambda i: torch.full((2,), math.nan), "NaN or infinite"),
        (lambda i: torch.zeros(2, dtype=torch.int64), "torch.int64 values; expected floats"),
        (lambda i: {"x": torch.zeros(2)}, "a batch must be a tensor x or a tuple"),
    ],
)
def test_bad_items_are_one_line_errors(item, message):
    class Items(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return item(index)

    with pytest.raises((ValueError, TypeError), match=message) as caught:
        ff.fit(small_flow(), Items(), epochs=1, progress=False)
    assert "\n" not in str(caught.value)


def test_a_conditional_flow_reads_x_and_context_from_the_items():
    """Items (x, c) with a 1-D c: the same weights as the Split with a context column."""
    generator = torch.Generator().manual_seed(0)
    context = torch.rand(600, 1, generator=generator)
    x = torch.randn(600, 2, generator=generator) * 0.3 + 3 * context

    def conditional():
        torch.manual_seed(0)
        return ff.models.realnvp(dim=2, layers=2, hidden=(16,), context_dim=1)

    split_run, dataset_run = conditional(), conditional()
    options = dict(epochs=2, batch_size=100, progress=False)
    ff.fit(split_run, ff.datasets.Split(x, context=context), **options)
    ff.fit(dataset_run, TensorDataset(x, context.squeeze(1)), **options)
    assert same_weights(split_run, dataset_run)
    with pytest.raises(ValueError, match="the flow is conditional but the batches have no context"):
        ff.fit(conditional(), TensorDataset(x), epochs=1, progress=False)


def test_a_sharded_dataset_reads_only_its_part_of_each_batch():
    """`DatasetBatches` with a rank's ``shard``: the rows of its part of the run's batch,
    read alone; an empty part is an empty batch of the item's shape."""
    from flowforge.training.batches import DatasetBatches, SplitBatches

    reads = []

    class Logged(TensorDataset):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    x = torch.arange(20.0).reshape(10, 2)
    whole, part = (
        SplitBatches(ff.datasets.Split(x), 4),
        DatasetBatches(Logged(x), 4, conditional=False, shard=lambda n: slice(n - n // 2, n)),
    )
    whole.start(torch.Generator().manual_seed(0))
    part.start(torch.Generator().manual_seed(0))
    for step in range(3):  # batches of 4, 4 and 2 rows; this rank's part: the last half
        expected = whole.next(step, torch.Generator())[0]
        got, _ = part.next(step, torch.Generator())
        assert torch.equal(got, expected[len(expected) - len(expected) // 2 :])
    assert len(reads) == 2 + 2 + 1 and part.local
    empty = DatasetBatches(Logged(x), 4, conditional=False, shard=lambda n: slice(0, 0))
    empty.start(torch.Generator())
    got, context = empty.next(0, torch.Generator())
    assert got.shape == (0, 2) and context is None
