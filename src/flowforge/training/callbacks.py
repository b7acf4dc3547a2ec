r"""Callbacks: the one way to add to `fit`'s loop without changing it.

A callback overrides any of four hooks; `fit` calls them on every rank of a distributed run
(``run.main`` is True on the rank that writes files):

- ``on_fit_start(run)`` before the first step (also of a resumed run);
- ``on_step_end(run, loss)`` after every training step, with its loss as a float;
- ``on_epoch_end(run, record)`` after each epoch's validation, with the epoch's record
  (``epoch``, ``train_nll``, ``val_nll``, ``lr``, ``seconds``, ...), before the checkpoint is
  written; ``run.stop(reason)`` ends training there (the checkpoint records it);
- ``on_fit_end(run)`` when training ends, however it ends.

``run`` is the loop's state; callbacks may read ``run.flow``, ``run.optimizer``,
``run.scheduler``, ``run.history`` (a `History`), ``run.epoch`` (epochs finished),
``run.global_step`` (steps taken) and ``run.main``. `fit` builds its own options from the
callbacks here (``patience`` is `EarlyStopping`, ``metrics`` is `MetricsFile`,
``tensorboard`` is `TensorBoard`, ``callback`` is `EachEpoch`, ``checkpoint`` and
``checkpoint_every`` are `Checkpointing`) and runs the user's ``callbacks`` after them,
`Checkpointing` last. The divergence guard and the moving average of the weights stay in
the loop: the guard decides whether a step is taken at all, before the optimizer's step,
and the average is the weights that validation scores and the checkpoint keeps, points
these hooks do not reach. ``ff.fit_variational(callbacks=...)`` calls the same hooks, a
record (every ``log_every`` steps) standing for an epoch
(`flowforge.inference.variational.VariationalRun`).

Examples:
    >>> class StopBelow(Callback):
    ...     def __init__(self, target):
    ...         self.target = target
    ...
    ...     def on_epoch_end(self, run, record):
    ...         if record["val_nll"] is not None and record["val_nll"] < self.target:
    ...             run.stop(f"validation NLL below {self.target}")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowforge.runtime.extras import MissingExtraError
from flowforge.training.results import write_metrics


class Callback:
    """Hooks into `fit`'s loop; each does nothing unless overridden."""

    def on_fit_start(self, run: Any) -> None:
        """Before the first step."""

    def on_step_end(self, run: Any, loss: float) -> None:
        """After every training step."""

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        """After each epoch's validation, before its checkpoint."""

    def on_fit_end(self, run: Any) -> None:
        """When training ends (finished, stopped, interrupted or diverged)."""


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better validation NLL."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        best = run.history.best_epoch
        if best is not None and record["epoch"] - best >= self.patience:
            run.stop(f"early stop: no better validation NLL in {self.patience} epochs")


class MetricsFile(Callback):
    """The history as JSON lines in ``path``, rewritten atomically after every epoch and at
    the end (rank 0 only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        if run.main:
            write_metrics(run.history, self.path)

    def on_fit_end(self, run: Any) -> None:
        if run.main:
            write_metrics(run.history, self.path)


class TensorBoard(Callback):
    """Each epoch's numbers as TensorBoard scalars in ``log_dir`` (rank 0 only; needs the
    ``tensorboard`` extra, checked when the callback is made)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is an optional extra
            raise MissingExtraError("fit(tensorboard=...)", "tensorboard") from error
        self.log_dir, self.make, self.writer = str(log_dir), SummaryWriter, None

    def on_fit_start(self, run: Any) -> None:
        if run.main:
            self.writer = self.make(self.log_dir)

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, record["epoch"])

    def on_fit_end(self, run: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Checkpointing(Callback):
    """Save the run's state (``run.save()``, `flowforge.training.checkpoint`) every
    ``every`` steps inside an epoch, and at every epoch's end. `fit` runs it after every
    other callback, so that an epoch's checkpoint holds what they did (a stop included)."""

    def __init__(self, every: int | None = None) -> None:
        self.every = every

    def on_step_end(self, run: Any, loss: float) -> None:
        if self.every and run.global_step % self.every == 0 and run.step != run.steps_per_epoch:
            run.save()  # (the epoch's end saves anyway)

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        run.save()


class EachEpoch(Callback):
    """A function called with each epoch's record (`fit`'s ``callback=``)."""

    def __init__(self, function: Callable[[dict[str, Any]], None]) -> None:
        self.function = function

    def on_epoch_end(self, run: Any, record: dict[str, Any]) -> None:
        self.function(record)


def check_callbacks(callbacks: Any) -> list[Callback]:
    """The user's callbacks as a list; a one-line ``TypeError`` for anything else."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    try:
        listed = list(callbacks)
    except TypeError:
        listed = [callbacks]
    for item in listed:
        if not isinstance(item, Callback):
            raise TypeError(
                f"callbacks must be flowforge.training.Callback instances, got "
                f"{type(item).__name__} (for a function of each epoch's record, use callback=)"
            )
    return listed


__all__ = [
    "Callback",
    "Checkpointing",
    "EachEpoch",
    "EarlyStopping",
    "MetricsFile",
    "TensorBoard",
    "check_callbacks",
]
