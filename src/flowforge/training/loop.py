r"""Maximum-likelihood training (forward KL) and held-out evaluation.

Minimising the mean negative log-likelihood $-\frac1N\sum_i \log q_\theta(x_i)$ over data
from $p$ minimises $KL(p \| q_\theta) = -H(p) - E_p[\log q_\theta]$, so a model's test
NLL minus the data's entropy $H(p)$ estimates that KL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flowforge.datasets.base import Split
from flowforge.flows import models
from flowforge.flows.flow import Flow
from flowforge.runtime import devices, interrupts, logs
from flowforge.training import checkpoint, compiling, objectives, options
from flowforge.training import distributed as parallel
from flowforge.training.averaging import WeightAverage
from flowforge.training.batches import (
    Batches,
    LoaderBatches,
    batches_of,
    check_batch,
    describe_data,
    in_memory,
)
from flowforge.training.callbacks import (
    Callback,
    Checkpointing,
    EachEpoch,
    EarlyStopping,
    MetricsFile,
    TensorBoard,
    check_callbacks,
)
from flowforge.training.checkpoint import CHECKPOINT
from flowforge.training.divergence import (
    DivergenceError,
    DivergenceMonitor,
    Rollback,
    finite_parameters,
    scale_learning_rate,
)
from flowforge.training.objectives import Objective, ObjectiveLoss
from flowforge.training.optimizers import (
    OptimizerSpec,
    SchedulerSpec,
    build_optimizer,
    build_scheduler,
    check_options,
    describe,
)
from flowforge.training.precision import Bf16Products, check_precision
from flowforge.training.results import (
    History,
    _check_data,
    evaluate,
)
from flowforge.transforms.continuous import SolverError


def fit(
    flow: Flow,
    train: Split | Tensor | Dataset | DataLoader,
    val: Split | Tensor | Dataset | DataLoader | None = None,
    *,
    # what to minimise, and how long
    objective: str | Objective = "likelihood",
    epochs: int = 100,
    batch_size: int = 256,
    # the optimiser
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str | None = "cosine",
    optimizer: OptimizerSpec | None = None,
    scheduler: SchedulerSpec | None = None,
    clip: float | None = None,
    ema: float | None = None,
    # which weights to keep, and when to stop
    keep_best: bool = True,
    patience: int | None = None,
    # files: checkpoints and resume, metrics
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    metrics: str | Path | None = None,
    tensorboard: str | Path | None = None,
    # safety
    divergence_threshold: float | None = 10.0,
    rollbacks: int = 5,
    # where and how fast
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    compile: str | bool = "auto",
    precision: str = "float32",
    seed: int | None = 0,
    # feedback
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    r"""Fit ``flow`` to ``train`` by maximum likelihood with Adam (AdamW with ``weight_decay``)
    or the ``optimizer`` given.

    Each step minimises the mean NLL of a shuffled mini-batch,
    $-\frac1B \sum_b [\log p_z(f(x_b)) + \log|\det \partial f/\partial x_b|]$, with ``z``
    and the log-determinant from one pass. Discrete data are dequantised afresh every batch.

    Args:
        flow: the model, trained in place (and moved to ``device`` / ``dtype``).
        train: the training samples: a tensor of continuous data, a `Split`, a map-style
            torch ``Dataset`` (read one batch at a time), an ``IterableDataset`` that
            streams (read in batches of ``batch_size``) or a ``DataLoader`` (its own batches
            and shuffling); see `flowforge.training.batches` for the items and for how a
            resume replays a loader.
        val: the validation samples, of any of those kinds (optional).
        objective: what to minimise (`flowforge.training.objectives`): ``"likelihood"``
            (the default: the NLL, recorded as ``train_nll``) or ``"flow-matching"``
            (continuous flows: conditional flow matching, recorded as ``train_fm_loss``;
            ``FlowMatching(coupling="ot", sigma_min=...)`` for its options). The validation
            NLL is the exact one whatever the objective.
        epochs: passes over ``train``.
        batch_size: samples per step.
        lr: Adam's learning rate.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
        schedule: ``"cosine"`` (the default: the rate decays to 0 over all steps), ``"plateau"``
            (halve the rate after 10 epochs without validation improvement) or ``None``.
        optimizer: your own ``torch.optim.Optimizer`` over ``flow``'s parameters, or a
            function of the parameters that builds one (``lambda params:
            torch.optim.SGD(params, lr=0.1, momentum=0.9)``; a factory also works where
            ``device`` moves the flow). Default: flowforge's fused Adam with ``lr`` and
            ``weight_decay``, which must then be left at their defaults.
        scheduler: your own learning-rate scheduler of that optimizer, or a function of the
            optimizer that builds one (``lambda opt: StepLR(opt, step_size=1000)``); it is
            stepped after every training step (so its periods count steps), a
            ``ReduceLROnPlateau`` after every epoch with the validation NLL. It replaces
            ``schedule``. The optimizer's and the scheduler's states are checkpointed (as
            JSON and tensors), and a resume must use the same classes.
        clip: clip the gradient norm to this value.
        ema: the decay $d$ of an exponential moving average of the weights
            (`flowforge.training.averaging`; 0.99 is a good value for a few thousand
            steps), or None (the default): then the validation NLL, the best epoch and the
            weights ``fit`` leaves in ``flow`` are the average's, and the checkpoint holds
            it beside the trained weights.
        keep_best: end with the weights of the best validation epoch (if ``val`` is given).
        patience: stop after this many epochs without a better validation NLL.
        checkpoint: a directory; the training state is saved there at the end of every epoch
            (`flowforge.training.checkpoint`), when a signal stops training, and every
            ``checkpoint_every`` steps.
        resume: continue from the checkpoint in ``checkpoint`` at the step where it was
            taken (a group that ``torchrun --max-restarts`` restarted after a worker died
            resumes so by itself); where ``checkpoint`` holds none, a warning says
            "nothing to resume in DIR: starting a new run" and training starts from the
            beginning. Changing the model, the data, ``batch_size``, ``weight_decay``,
            ``schedule``, ``seed`` or ``dtype`` is refused with a ``ValueError`` naming them;
            a new ``lr``, ``clip`` or ``patience`` is applied and recorded in
            ``history.events``; more ``epochs`` continue the cosine schedule from the
            current rate to 0 over the added steps (from ``lr`` again if the run had
            finished: a warm restart).
        checkpoint_every: also save a checkpoint every this many steps inside an epoch, so
            that a killed run loses at most that many steps.
        metrics: a JSON-lines file rewritten (atomically) after every epoch, one line each.
        tensorboard: a log directory for TensorBoard scalars (needs ``tensorboard``).
        divergence_threshold: a step whose loss is not finite, or exceeds the
            running loss by ``divergence_threshold`` running spreads
            (`flowforge.training.divergence`; ``None``: finiteness only), rolls the model and the
            optimiser back to their last good state (kept every 25 steps) with the learning
            rate halved, at most ``rollbacks`` times; then `DivergenceError`.
        rollbacks: how many rollbacks a run may take before it stops.
        device: where to train: "cpu", "cuda", "cuda:N", "mps" or "auto" (CUDA where there is
            one), or a `torch.device`; default: the flow's device.
        dtype: the precision to train in (default: the flow's).
        distributed: train one model on all the processes of a ``torch.distributed`` group
            (`flowforge.training.distributed`): None (the default) joins the group that
            ``torchrun`` or ``flowforge fit --nproc`` set up in the environment, if any; True
            requires one; False trains on this process alone. The flow is wrapped in
            DistributedDataParallel, each step's global batch of ``batch_size`` is split
            between the ranks (a map-style dataset is read in shards, each rank reading its
            part; a ``DataLoader`` of a ``DistributedSampler`` gives each rank its own
            batches: `flowforge.training.batches`), the validation sums are all-reduced,
            and only rank 0 writes checkpoints, metrics, TensorBoard logs and the progress
            bar; the result equals the one-process run's up to the order of floating-point
            sums.
        compile: ``"auto"`` (the default) compiles the training step with ``torch.compile``
            when the steps left repay the compile time, judged from the eager step time
            measured over the first steps (`flowforge.training.compiling`), and goes back to
            eager steps if the compiled ones are not faster; it stays eager for a
            distributed run and for a step that solves an ODE. ``True`` compiles whatever
            the run's length; ``False`` never does. A compilation that fails is reported in
            one line and training continues eagerly. A compilation is an entry of
            ``history.events``.
        precision: ``"float32"`` (the default) or ``"bf16"``: the networks' matrix products
            in bfloat16 under ``torch.autocast``, the log-determinants, the base
            log-density and the loss in float32 (`flowforge.training.precision`); for a
            float32 flow on a CPU or a GPU with bf16. Validation stays in float32.
        seed: seeds initialisation-independent randomness (shuffling, dequantisation, sampling
            in the model); ``None`` leaves the global generators alone.
        progress: show a progress bar with the running loss and the validation NLL.
        callback: called with each epoch's record (on every rank of a distributed run).
        callbacks: your own `flowforge.training.callbacks.Callback` objects, called after
            fit's own (early stopping, the metrics file, TensorBoard, ``callback``) at the
            start, after every step, after every epoch (where one can stop training) and
            at the end.
    Returns:
        The `History`. A validation NLL that is not finite is recorded as ``None`` and
        never chosen as the best. On divergence beyond the rollbacks a
        `DivergenceError` (a ``FloatingPointError``) names the step; its ``history``
        holds what was done, and the flow holds the best epoch's weights (``keep_best``) or
        the last good ones. SIGINT (Ctrl-C) or SIGTERM stops training after the step under
        way: the checkpoint is saved, the best weights restored, and ``history.stopped``
        and ``history.signal`` say so.
    """
    train, val = in_memory(train), in_memory(val)
    options.check(
        options.FIT,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        clip=clip,
        ema=ema,
        keep_best=keep_best,
        patience=patience,
        resume=resume,
        checkpoint_every=checkpoint_every,
        divergence_threshold=divergence_threshold,
        rollbacks=rollbacks,
        compile=compile,
        precision=precision,
        seed=seed,
        progress=progress,
    )
    check_options(optimizer, scheduler, lr, weight_decay, schedule)
    hooks = [EarlyStopping(patience)] if patience is not None else []
    hooks += [MetricsFile(metrics)] if metrics is not None else []
    hooks += [TensorBoard(tensorboard)] if tensorboard is not None else []
    hooks += [EachEpoch(callback)] if callback is not None else []
    hooks += check_callbacks(callbacks)
    hooks += [Checkpointing(checkpoint_every)] if checkpoint is not None else []  # last
    if checkpoint is not None and not resume and parallel.restart_count() > 0:
        resume = True  # torchrun restarted the group after a worker died: go on from the checkpoint
        if parallel.launched_rank() == 0:
            LOG.warning(f"torchrun restart {parallel.restart_count()}: resuming from {checkpoint}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=, the directory to resume from; got None")
    objective = objectives.get(objective)
    objective.check(flow)
    target = devices.resolve(device, default=str(flow.device))
    workers = parallel.setup(distributed, target)
    if workers is not None:
        target = parallel.device_for(target)
    flow.to(device=target, dtype=dtype or flow.dtype)
    check_precision(precision, flow.dtype, flow.device)
    for name, split in (("train", train), ("val", val)):
        if isinstance(split, Split):  # a dataset or a loader: each batch when it is read
            _check_data(flow, split, name)
    if seed is not None:
        torch.manual_seed(seed)
    trainer = _Trainer(
        flow,
        train,
        val,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        optimizer=optimizer,
        scheduler=scheduler,
        clip=clip,
        patience=patience,
        keep_best=keep_best,
        seed=seed,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        checkpoint_every=checkpoint_every,
        divergence_threshold=divergence_threshold,
        rollbacks=rollbacks,
        callbacks=hooks,
        workers=workers,
        objective=objective,
        compile=compile,
        precision=precision,
        ema=ema,
    )
    if resume and (trainer.checkpoint / CHECKPOINT).exists():
        trainer.resume()
    elif resume:  # a typo in the directory must not pass for a resumed run
        trainer._say(f"nothing to resume in {trainer.checkpoint}: starting a new run")
    with interrupts.handling():
        return trainer.run(progress)


LOG = logs.logger("training")  # warnings: rollbacks, a failed compilation, nothing to resume
PROGRESS = logs.logger("progress")  # one line per epoch where no progress bar is drawn
SNAPSHOT_EVERY = 25  # steps between in-memory copies of the last good training state
REFUSED_ON_RESUME = (
    "model",
    "train",
    "val",
    "batch_size",
    "weight_decay",
    "schedule",
    "optimizer",
    "scheduler",
    "seed",
    "dtype",
    "objective",
    "ema",
)


class _Trainer:
    """The state of one `fit()`: the loop, its checkpoints, resume and rollbacks."""

    def __init__(self, flow: Flow, train: Any, val: Any, **options: Any) -> None:
        self.flow, self.train, self.val = flow, train, val
        for name, value in options.items():  # epochs, batch_size, lr, ... as fit's arguments
            setattr(self, name, value)
        # a data-parallel run reads a dataset's batches in shards, unless the objective
        # draws for the global batch (flow matching's noise and pairing)
        shard = None if self.workers is None or self.objective.draws else self.workers.shard
        self.batches: Batches = batches_of(train, self.batch_size, flow.context_dim != 0, shard)
        if self.batches.local and self.workers is None:
            raise ValueError(
                "the DataLoader's sampler is a DistributedSampler but this run is not "
                "distributed; give it a plain loader, or start the run under torchrun"
            )
        if self.batches.local and self.objective.draws:
            raise ValueError(
                f"objective {self.objective.name!r} draws its noise and pairing for the global "
                "batch on every rank; give the DataLoader without a DistributedSampler (each "
                "rank then reads the global batch and trains on its part)"
            )
        self.main = self.workers is None or self.workers.is_main  # writes files and logs
        if isinstance(self.batches, LoaderBatches):  # only rank 0's last batch is stored
            self.batches.verify = self.main or not self.batches.local
        loss = ObjectiveLoss(self.objective, flow)
        self.bf16 = Bf16Products(loss, flow.device.type) if self.precision == "bf16" else None
        loss = loss if self.bf16 is None else self.bf16
        self.loss = loss if self.workers is None else parallel.wrap(loss)
        self.generator = torch.Generator().manual_seed(0 if self.seed is None else self.seed)
        # the user's optimizer and scheduler (or their factories), else flowforge's
        self.optimizer = build_optimizer(self.optimizer, flow, self.lr, self.weight_decay)
        self.steps_per_epoch = self.batches.steps_per_epoch  # None: a stream of unknown size
        plan = build_scheduler(self.scheduler, self.optimizer, self.schedule, self.total_steps)
        # stepped after every "step", or with the "validation" NLL; fit's own is re-planned
        self.scheduler, self.scheduler_every, self.own_schedule = (
            plan.scheduler,
            plan.every,
            plan.own,
        )
        if self.checkpoint is not None:
            checkpoint.check_storable(self.optimizer, self.scheduler)
        self.history = History()
        self.best_state: dict[str, Tensor] | None = None
        self.monitor = DivergenceMonitor(self.divergence_threshold)
        self.rollback = Rollback(flow, self.optimizer)
        self.average = None if self.ema is None else WeightAverage(flow, self.ema)
        self.rollbacks_used = 0
        self.stop_reason: str | None = None  # a callback's request to stop
        self.done = False  # a resumed run that had already stopped early
        self.epoch, self.step = 0, 0  # where training stands: steps done in this epoch
        self.global_step = 0  # steps done in all
        self.in_epoch = False  # between an epoch's first batch and its end
        self.total, self.count, self.seconds = 0.0, 0, 0.0  # the epoch's running sums
        self.penalty_total = 0.0  # of the layers' penalties (regularised continuous flows)
        # layers that report statistics (evaluations of an ODE solve) or add a penalty
        self.reporting = self.objective.solves and any(
            callable(getattr(m, "statistics", None)) for m in flow.transform.modules()
        )
        self.last_statistics: dict[str, float] = {}
        self.penalised = False
        self.settings = self._settings() if self.checkpoint is not None else None

    @property
    def total_steps(self) -> int | None:
        if self.steps_per_epoch is None:
            return None
        return self.epochs * self.steps_per_epoch

    # --- checkpoints ----------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """What a resumed run must share with this one (and what it may change)."""

        return {
            "model": self.flow.config,
            "train": self.batches.describe(),
            "val": describe_data(self.val),
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "optimizer": describe(self.optimizer),
            "scheduler": None if self.own_schedule else describe(self.scheduler),
            "seed": self.seed,
            "dtype": str(self.flow.dtype).removeprefix("torch."),
            "epochs": self.epochs,
            "lr": self.lr,
            "clip": self.clip,
            "patience": self.patience,
            "objective": self.objective.describe(),
            "ema": self.ema,
            "precision": self.precision,
        }

    def save(self) -> None:
        """Checkpoint the state as it stands (between steps), if a directory was given."""
        if self.checkpoint is None:
            return
        if not finite_parameters(self.flow):  # never save non-finite weights
            self._bad_step(math.nan, "the weights became non-finite")
        if not self.main:  # every rank holds the same state: rank 0 writes it
            return
        position, tensors = None, {}
        if self.in_epoch:
            batches, tensors = self.batches.state()
            position = {
                "epoch": self.epoch,
                "step": self.step,
                "total": self.total,
                "count": self.count,
                "penalty_total": self.penalty_total,
                "seconds": self.seconds,
                "batches": batches,
            }
        state = {
            "history": asdict(self.history),
            "global_step": self.global_step,
            "position": position,
            "monitor": self.monitor.state_dict(),
            "rollbacks_used": self.rollbacks_used,
            "settings": self.settings,
        }
        if self.average is not None:
            state["ema_updates"] = self.average.updates
            tensors.update({f"ema.{k}": v for k, v in self.average.state_dict().items()})
        with interrupts.deferred():
            checkpoint.save(
                self.checkpoint,
                self.flow,
                self.optimizer,
                self.scheduler,
                self.generator,
                state,
                self.best_state,
                tensors,
            )

    def resume(self) -> None:
        """Continue from the checkpoint: refuse changed settings, apply the allowed ones."""
        metadata, tensors = checkpoint.read(self.checkpoint)
        saved = metadata.get("settings") or {}
        if isinstance(saved.get("model"), dict):  # saved before a builder argument existed
            saved = {**saved, "model": models.with_defaults(saved["model"])}
        changed = [
            key for key in REFUSED_ON_RESUME if key in saved and saved[key] != self.settings[key]
        ]
        if changed:
            details = "; ".join(_describe_change(k, saved[k], self.settings[k]) for k in changed)
            raise ValueError(
                f"cannot resume from {self.checkpoint / CHECKPOINT}: {details}; resume with "
                "the run's own settings, or start a new checkpoint directory"
            )
        self.best_state = checkpoint.restore(
            metadata, tensors, self.flow, self.optimizer, self.scheduler, self.generator
        )
        self.history = History(**metadata["history"])
        stopped_early = self.history.stopped.startswith("early stop")
        self.history.stopped, self.history.signal = "finished", None
        self.monitor.load_state_dict(metadata.get("monitor") or self.monitor.state_dict())
        self.rollbacks_used = metadata.get("rollbacks_used", 0)
        if self.average is not None and "ema_updates" in metadata:  # else a checkpoint from
            extra = checkpoint.extra_tensors(tensors)  # before ema existed: start it afresh
            averaged = {k[4:]: v for k, v in extra.items() if k.startswith("ema.")}
            self.average.load_state_dict(averaged, metadata["ema_updates"])
        position = metadata.get("position")
        if position is not None:
            self.epoch, self.step = position["epoch"], position["step"]
            self.total, self.count = position["total"], position["count"]
            self.penalty_total = position.get("penalty_total", 0.0)
            self.seconds = position["seconds"]
            extra = checkpoint.extra_tensors(tensors)
            self._restore_batches(position.get("batches", {}), extra)
            self.in_epoch = True
        else:
            self.epoch, self.step = len(self.history.epochs), 0
        self.global_step = metadata.get("global_step")  # (checkpoints of flowforge 0.1 lack it)
        if self.global_step is None:
            self.global_step = self.epoch * self.steps_per_epoch + self.step
        self.history.events.append({"event": "resumed", "epoch": self.epoch + 1, "step": self.step})
        for key in ("lr", "clip", "patience"):
            if key in saved and saved[key] != self.settings[key]:
                self._change(key, saved[key], self.settings[key])
        if "epochs" in saved and saved["epochs"] != self.epochs:
            self._extend(saved["epochs"])
        self.done = stopped_early and saved.get("patience") == self.patience
        if self.done:
            self.history.stopped = metadata["history"]["stopped"]

    def _restore_batches(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Resume the epoch's batches; in a distributed run every rank fails if one does
        (only rank 0 can check a DistributedSampler's replay)."""
        try:
            self.batches.restore(state, tensors, self.step)
            failure = None
        except checkpoint.CheckpointError as error:
            failure = error
        if self.workers is not None:
            (failed,) = self.workers.all_sum(float(failure is not None))
            if failed and failure is None:
                failure = checkpoint.CheckpointError(
                    "cannot resume inside an epoch: rank 0's replay of the DataLoader did not "
                    "give the batch it trained on; start a new run"
                )
        if failure is not None:
            raise failure

    def _change(self, key: str, old: Any, new: Any) -> None:
        """Apply a setting changed on resume, and record it."""
        if key == "lr":
            scale_learning_rate(self.optimizer, self.scheduler, new / old)
        self.history.events.append(
            {"event": f"{key} changed", "from": old, "to": new, "epoch": self.epoch + 1}
        )

    def _extend(self, planned_epochs: int) -> None:
        """A new number of epochs on resume: re-plan the cosine schedule over what is left."""
        finished = self.epoch >= planned_epochs and self.step == 0
        self.history.events.append(
            {"event": "epochs changed", "from": planned_epochs, "to": self.epochs}
        )
        own_cosine = self.own_schedule and self.schedule == "cosine"
        if not own_cosine or self.global_step >= self.total_steps:
            return
        start = self.lr if finished else self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = start
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_steps - self.global_step
        )

    # --- divergence -------------------------------------------------------------------

    def _bad_step(self, loss: float, what: str | None = None) -> None:
        """Roll back after a bad loss, or stop with `DivergenceError`."""
        where = f"epoch {self.epoch + 1}, step {self.step + 1}"
        if what is None:
            limit = self.monitor.limit()
            what = f"the training loss became {loss:.6g}" + (
                f" (above the running limit {limit:.6g})" if math.isfinite(loss) else ""
            )
        if self.rollback.state is not None and self.rollbacks_used < self.rollbacks:
            self.rollbacks_used += 1
            lr = self.rollback.restore(self.scheduler, 0.5)[0]
            if self.average is not None:  # average the weights from the good state on
                self.average.restart()
            self.history.events.append(
                {
                    "event": "rollback",
                    "epoch": self.epoch + 1,
                    "step": self.step + 1,
                    "loss": loss if math.isfinite(loss) else str(loss),
                    "to_step": self.rollback.step,
                    "lr": lr,
                }
            )
            self._say(
                f"flowforge fit: {what} at {where}; rolled back to global step "
                f"{self.rollback.step} with the learning rate halved to {lr:.3g} "
                f"(rollback {self.rollbacks_used} of {self.rollbacks})"
            )
            return
        kept = "the best epoch's weights" if self.keep_best and self.best_state else None
        if self.rollback.state is not None:
            self.rollback.restore(self.scheduler, 1.0)
            kept = kept or f"the last good weights (global step {self.rollback.step})"
        self.history.stopped = "diverged"
        self.history.events.append(
            {"event": "diverged", "epoch": self.epoch + 1, "step": self.step + 1}
        )
        advice = (
            f"lower the learning rate (now {self.optimizer.param_groups[0]['lr']:.3g}) or set clip"
        )
        after = f" after {self.rollbacks_used} rollbacks" if self.rollbacks else ""
        kept_text = f"; kept {kept}" if kept else "; no good state to keep"
        raise DivergenceError(f"{what} at {where}{after}{kept_text}; {advice}", self.history)

    # --- the loop ---------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End training after this epoch (a callback's request), with ``reason`` as
        ``history.stopped`` (at once at an epoch's end, so that its checkpoint says so)."""
        self.stop_reason = reason
        if not self.in_epoch:
            self.history.stopped = reason

    def run(self, progress: bool) -> History:
        flow = self.flow
        validate_args, flow.validate_args = flow.validate_args, False  # data checked up front
        # A bar on a terminal; one line per epoch elsewhere (a log file, CI, nohup), where a
        # bar's carriage returns would make one line of tens of thousands of characters.
        progress = progress and self.main
        self.epoch_lines = progress and not is_terminal(sys.stderr)
        total = self.total_steps
        bar = tqdm(
            total=total,
            initial=self.global_step if total is None else min(self.global_step, total),
            disable=not progress or self.epoch_lines,
            unit="step",
            dynamic_ncols=True,
        )
        self.step_loss = compiling.StepCompiler(
            self.loss,
            self.compile,
            steps_left=0 if total is None else total - self.global_step,  # unknown: eager
            record=self.history.events.append,
            say=self._say,
            eager_only=self._eager_only(),
        )
        shown = contextlib.ExitStack()  # progress and warnings through logging, on stderr
        shown.enter_context(logs.showing_progress(progress))  # unless logging is configured
        if progress and not self.epoch_lines:  # log records above the bar, not through it
            shown.enter_context(logging_redirect_tqdm([logging.getLogger(logs.ROOT)]))
        try:
            for hook in self.callbacks:
                hook.on_fit_start(self)
            if self.rollback.state is None and self.global_step > 0:
                self.rollback.keep(self.global_step)  # resumed: the checkpoint's state is good
            while self.epoch < self.epochs and not self.done:
                if self._run_epoch(bar):
                    break
        except interrupts.Interrupted as stop:  # a step or a save ended; the state is whole
            self.history.stopped = (
                f"interrupted by {stop.name} at epoch {self.epoch + 1}, step {self.step}"
            )
            self.history.signal = stop.signum
            self.save()
        except KeyboardInterrupt:  # raised by other code: the last checkpoint stays as it is
            self.history.stopped = f"interrupted at epoch {self.epoch + 1}"
        finally:
            bar.close()
            flow.validate_args = validate_args
            if self.best_state is not None and self.keep_best:
                flow.load_state_dict(self.best_state)
            elif self.average is not None and self.average.updates:
                flow.load_state_dict(self.average.state_dict())  # the average, for evaluation
            flow.eval()
            if self.bf16 is not None:
                self.bf16.remove()  # the flow's layers without the casts again
            for hook in self.callbacks:
                hook.on_fit_end(self)
            shown.close()
        return self.history

    def _run_epoch(self, bar) -> bool:
        """Train the rest of the current epoch, validate, record, save; return whether to
        stop early."""
        self.flow.train()
        self.started = time.perf_counter() - self.seconds
        if not self.in_epoch:
            with interrupts.deferred():
                self.batches.start(self.generator, self.epoch)
                self.in_epoch = True
                self.step, self.total, self.count, self.penalty_total = 0, 0.0, 0, 0.0
        while True:
            with interrupts.deferred():
                if not self._train_step():
                    break
                bar.update()
                if self.step % 10 == 0:
                    running = self.total / max(self.count, 1)
                    postfix = _postfix(self.epoch, running, self.history, self.last_statistics)
                    bar.set_postfix_str(postfix, refresh=False)
        with interrupts.deferred():
            return self._end_epoch(bar, time.perf_counter() - self.started)

    def _train_step(self) -> bool:
        """Train on the epoch's next batch; False if the epoch has no batch left."""
        flow = self.flow
        # the global batch, or (batches.local) this rank's part of it
        batch = self.batches.next(self.step, self.generator)
        if batch is None:
            return False
        if not isinstance(self.train, Split):  # a dataset's or loader's: checked as it comes
            check_batch(flow, *batch)
        x = batch[0].to(flow.device, flow.dtype)
        context = None if batch[1] is None else batch[1].to(flow.device, flow.dtype)
        penalty, failure = None, None
        try:
            if self.workers is None:
                loss = self.step_loss(*self.objective.prepare(x, context, self.generator)).mean()
                value = loss.item()  # the objective's loss, whatever the penalty
                penalty = flow.penalty() if self.reporting else None
                loss = loss if penalty is None else loss + penalty
                size = len(x)
            else:
                loss, value, penalty, size = self._shard_loss(x, context)
        except SolverError as error:  # a field that cannot be integrated any more: diverged
            value, failure = math.nan, f"the ODE solve failed ({error})"
        if failure is None and self.monitor.check(value):
            if self.global_step % SNAPSHOT_EVERY == 0:
                self.rollback.keep(self.global_step)  # the weights whose loss was just good
            gradient_step(self.optimizer, loss, self.clip)
            if self.average is not None:
                self.average.update()
            self.total += value * size
            self.count += size
            self.penalised = penalty is not None
            if penalty is not None:
                self.penalty_total += penalty.item() * size
            if self.reporting:  # after the backward pass, whose evaluations it counts
                self.last_statistics = flow.statistics()
        else:
            self._bad_step(value, failure)
        if self.scheduler_every == "step":
            self.scheduler.step()
        self.step += 1
        self.global_step += 1
        self.seconds = time.perf_counter() - self.started
        for hook in self.callbacks:  # fit's, the user's, then the checkpoint's
            hook.on_step_end(self, value)
        return True

    def _shard_loss(
        self, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, float, Tensor | None, int]:
        """This rank's loss, scaled so that DDP's gradient average is the global batch's,
        the global batch's mean NLL (`flowforge.training.distributed`), this rank's
        penalty (a regularised continuous flow's) or None, and the global batch's size.
        ``x`` is the global batch, or this rank's part of it where the batches are local."""
        if self.batches.local:
            if parallel.pending(self.flow):  # data-dependent layers see the global batch
                parallel.initialize(self.flow, parallel.gather(x), parallel.gather(context))
            inputs = self.objective.prepare(x, context, self.generator)  # draws nothing
            part = slice(0, len(x))
        else:
            parallel.initialize(self.flow, x, context)  # data-dependent layers, alike
            inputs = self.objective.prepare(x, context, self.generator)  # the global draws
            part = self.workers.shard(len(x))
        nll = self.step_loss(*(None if v is None else v[part] for v in inputs)).sum()
        loss = nll
        penalty = self.flow.penalty() if self.reporting and part.stop > part.start else None
        if penalty is not None:  # a batch mean: weighted by the part's share
            loss = loss + penalty * (part.stop - part.start)
        if part.stop == part.start:  # nothing here: a zero that still reaches every parameter
            loss = loss + sum(p.sum() for p in self.flow.parameters()) * 0.0
        total, size = self.workers.all_sum(nll.item(), part.stop - part.start)
        size = round(size)
        return loss * (self.workers.world_size / size), total / size, penalty, size

    def _eager_only(self) -> str | None:
        """Why ``compile="auto"`` must stay eager in this run, or None."""
        if self.workers is not None:  # the ranks' timings differ, and they must decide alike
            return "a distributed run compiles only with compile=True"
        if self.reporting:  # an adaptive solve: its steps vary, and so would the graph
            return "the step solves an ODE"
        return None

    def _say(self, message: str) -> None:
        """A warning through logging (`flowforge.runtime.logs`), from rank 0 only."""
        if self.main:
            LOG.warning(message)

    def _end_epoch(self, bar, seconds: float) -> bool:
        flow, val, train = self.flow, self.val, self.train
        self.batches.finish()
        if not finite_parameters(flow):
            self._bad_step(math.nan, "the weights became non-finite")
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_nll": None,
            "val_nll": None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
        }
        record[self.objective.record] = self.total / self.count if self.count else None
        if self.batches.discrete and record["train_nll"] is not None:
            record["train_bpd"] = train.bits_per_dim(record["train_nll"])
        if self.reporting and self.count:  # the last step's solves; the epoch's penalty
            record.update(self.last_statistics)
            if self.penalised:
                record["penalty"] = self.penalty_total / self.count
        if val is not None:
            evaluated = flow if self.average is None else self.average.flow()
            report = evaluate(evaluated, val, seed=1, workers=self.workers)
            if math.isfinite(report.nll):
                record["val_nll"] = report.nll
                if report.bits_per_dim is not None:
                    record["val_bpd"] = report.bits_per_dim
                if self.history.best_val_nll is None or report.nll < self.history.best_val_nll:
                    self.history.best_val_nll, self.history.best_epoch = report.nll, self.epoch + 1
                    if self.keep_best:
                        self.best_state = _copy_state(evaluated)
            else:  # never the best epoch; JSON has no infinities
                record["val_nll_not_finite"] = str(report.nll)
            if self.scheduler_every == "validation":
                self.scheduler.step(report.nll if math.isfinite(report.nll) else math.inf)
        self.history.epochs.append(record)
        running = record[self.objective.record]
        bar.set_postfix_str(_postfix(self.epoch, running or math.nan, self.history))
        if self.epoch_lines:
            PROGRESS.info(_epoch_line(record, self.epochs, self.history))
        self.epoch, self.step, self.in_epoch = self.epoch + 1, 0, False
        self.total, self.count, self.seconds, self.penalty_total = 0.0, 0, 0.0, 0.0
        if self.stop_reason is not None:  # asked for during the epoch
            self.history.stopped = self.stop_reason
        # fit's (early stopping, files, callback=), the user's, then the checkpoint's
        for hook in self.callbacks:
            hook.on_epoch_end(self, record)
        return self.stop_reason is not None


def _describe_change(key: str, old: Any, new: Any) -> str:
    """One clause naming a setting that changed between a checkpoint and a resume."""
    if key in ("train", "val"):
        if old is None or new is None:
            then, now = ("absent", "given") if old is None else ("given", "absent")
            return f"the {key} split was {then} and is now {now}"
        if old["n"] != new["n"]:
            return f"the {key} data changed ({old['n']} samples, now {new['n']})"
        return f"the {key} data changed (same size, other values)"
    if key == "model" and isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return (
            "the model changed ("
            + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
            + ")"
        )
    return f"{key} was {old!r} and is now {new!r}"


def gradient_step(optimizer: torch.optim.Optimizer, loss: Tensor, clip: float | None) -> None:
    """One optimiser step on ``loss``, with the gradient norm clipped to ``clip`` if given."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()


def _copy_state(flow: Flow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _postfix(
    epoch: int, running: float, history: History, statistics: dict[str, float] | None = None
) -> str:
    text = f"epoch {epoch + 1} loss {running:.4f}"
    if statistics and "nfe_forward" in statistics:
        text += f" nfe {statistics['nfe_forward']}/{statistics['nfe_backward']}"
    if history.epochs and history.epochs[-1]["val_nll"] is not None:
        text += f" val {history.epochs[-1]['val_nll']:.4f} best {history.best_val_nll:.4f}"
    return text


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (progress bars there; one line per report elsewhere)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _epoch_line(record: dict[str, Any], epochs: int, history: History) -> str:
    """One line of progress for a log: ``epoch 3/100  train 1.0912  val 1.0874 (best 1.0874
    at 3)  lr 9.8e-04  1.4 s``."""

    def number(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    if record.get("train_nll") is None and record.get("train_fm_loss") is not None:
        line = f"epoch {record['epoch']}/{epochs}  fm loss {record['train_fm_loss']:.4f}"
    else:
        line = f"epoch {record['epoch']}/{epochs}  train {number(record['train_nll'])}"
    if "val_nll" in record and (record["val_nll"] is not None or "val_nll_not_finite" in record):
        line += f"  val {number(record['val_nll'])}"
        if history.best_epoch is not None:
            line += f" (best {history.best_val_nll:.4f} at {history.best_epoch})"
    if "val_bpd" in record:
        line += f"  {record['val_bpd']:.4f} bits/dim"
    if "nfe_forward" in record:  # a continuous flow's last training step
        line += f"  nfe {record['nfe_forward']}/{record['nfe_backward']}"
    return line + f"  lr {record['lr']:.2e}  {record['seconds']:.3g} s"
