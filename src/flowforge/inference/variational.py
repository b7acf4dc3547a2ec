r"""Variational inference: fit a flow $q$ to an unnormalised density by reverse KL.

For a target $\tilde p(z) = Z\,p(z) = e^{-U(z)}$,

$$
KL(q \| p) = E_{z \sim q}[\log q(z) - \log \tilde p(z)] + \log Z = -\mathrm{ELBO} + \log Z,
$$

so minimising $E_q[\log q - \log\tilde p]$ over the flow's parameters minimises the KL
without knowing $Z$. The expectation is a Monte Carlo mean over reparameterised samples
$z_K = f^{-1}(z_0)$, $z_0 \sim q_0$, whose log-density
$\log q_0(z_0) - \sum_k \log|\det J_k|$ comes from the same pass
(`Flow.sample_and_log_prob()`). Any flow of the library works; coupling flows run in
their generative direction.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowforge.flows.flow import Flow
from flowforge.runtime import devices, logs
from flowforge.training import options
from flowforge.training.callbacks import Callback, EachEpoch, check_callbacks
from flowforge.training.loop import gradient_step, is_terminal
from flowforge.training.optimizers import (
    OptimizerSpec,
    SchedulerSpec,
    build_optimizer,
    build_scheduler,
    check_options,
)

PROGRESS = logs.logger("progress")  # one line every 5% of the steps where no bar is drawn


class UnnormalisedDensity(Protocol):
    def log_prob(self, z: Tensor) -> Tensor: ...


@dataclass
class VariationalHistory:
    """One record every ``log_every`` steps: ``step``, ``loss`` (the annealed objective),
    ``elbo`` (at $\\beta = 1$, averaged over the interval), ``beta``, ``lr``, ``seconds``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "finished"

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class VariationalRun:
    """What a `Callback` of `fit_variational` sees as ``run``: the ``flow``, ``optimizer``,
    ``scheduler``, ``history`` and ``global_step`` (steps taken); ``main`` is True (one
    process). A record is the hooks' "epoch": ``on_epoch_end(run, record)`` comes every
    ``log_every`` steps, and ``run.stop(reason)`` ends training there."""

    flow: Flow
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: VariationalHistory
    global_step: int = 0
    main: bool = True
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End training after this record, with ``reason`` as ``history.stopped``."""
        self.stop_reason = reason


def annealing(step: int, anneal: int | None, beta0: float = 0.01) -> float:
    r"""The inverse temperature $\beta_t = \min(1, \beta_0 + (1 - \beta_0)\,t / T)$ of step
    ``t`` with ``T = anneal`` steps of annealing (1 throughout when ``anneal`` is None or 0).

    The annealed objective $E_q[\log q - \beta_t \log\tilde p]$ starts from a flattened
    target, which guards against the collapse onto one mode that Rezende & Mohamed (2015) report
    on U3 and U4.
    """
    if not anneal:
        return 1.0
    return min(1.0, beta0 + (1.0 - beta0) * step / anneal)


def fit_variational(
    flow: Flow,
    target: UnnormalisedDensity | Callable[[Tensor], Tensor],
    *,
    steps: int = 10_000,
    batch_size: int = 1000,
    lr: float = 1e-3,
    anneal: int | None = None,
    beta0: float = 0.01,
    schedule: str | None = "cosine",
    optimizer: OptimizerSpec | None = None,
    scheduler: SchedulerSpec | None = None,
    clip: float | None = None,
    log_every: int = 100,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = 0,
    callback: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> VariationalHistory:
    r"""Fit ``flow`` to the unnormalised ``target`` by minimising the reverse KL with Adam.

    Each step draws ``batch_size`` reparameterised samples with their log-density in one pass
    and takes a gradient step on $\frac1B\sum_b [\log q(z_b) - \beta_t \log\tilde p(z_b)]$.

    Args:
        flow: the approximation, trained in place (a learnable base such as
            ``base="diag-normal"`` is usual).
        target: an object with ``log_prob(z)`` (``(N, d) -> (N,)``, unnormalised), or such a
            callable.
        steps: optimisation steps.
        batch_size: samples from the flow per step.
        lr: Adam's learning rate.
        anneal: steps over which $\beta$ rises linearly from ``beta0`` to 1 (see
            `annealing()`); None for none.
        schedule: ``"cosine"`` (the learning rate decays to 0 over ``steps``) or None.
        optimizer: your own optimizer (or a factory of the parameters), as in
            `flowforge.fit()`; default: Adam with ``lr``.
        scheduler: your own learning-rate scheduler (or a factory of the optimizer),
            stepped after every step, as in `flowforge.fit()`; it replaces ``schedule``.
        clip: clip the gradient norm to this value.
        log_every: steps per record of the history (and progress-bar update).
        device: as in `flowforge.fit()`.
        dtype: as in `flowforge.fit()`.
        seed: as in `flowforge.fit()`.
        callback: called with each record.
        callbacks: `flowforge.training.callbacks.Callback` objects, as in
            `flowforge.fit()`: ``on_fit_start``, ``on_step_end`` after every step,
            ``on_epoch_end`` with each record (every ``log_every`` steps; ``run.stop``
            ends training there), ``on_fit_end``; ``run`` is a `VariationalRun`.

    Returns:
        The `VariationalHistory`. A NaN or infinite objective stops training with a
        ``FloatingPointError`` naming the step (the exception's ``history`` holds the records
        before it); Ctrl-C stops it cleanly and returns.
    """
    log_prob = target if callable(target) and not hasattr(target, "log_prob") else target.log_prob
    options.check(
        options.VARIATIONAL,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        anneal=anneal,
        schedule=schedule,
        clip=clip,
        log_every=log_every,
        seed=seed,
        progress=progress,
    )
    if not 0 < beta0 <= 1:
        raise ValueError(f"beta0 must be in (0, 1], got {beta0!r}")
    check_options(optimizer, scheduler, lr, 0.0, schedule)
    flow.to(device=devices.resolve(device, default=str(flow.device)), dtype=dtype or flow.dtype)
    if seed is not None:
        torch.manual_seed(seed)
    optimizer = build_optimizer(optimizer, flow, lr)
    plan = build_scheduler(scheduler, optimizer, schedule, steps)
    if plan.every == "validation":
        raise ValueError(
            "ReduceLROnPlateau steps on a validation loss, which fit_variational does not "
            "have; give a scheduler that steps every step"
        )
    scheduler = plan.scheduler
    history = VariationalHistory()
    hooks = [EachEpoch(callback)] if callback is not None else []
    hooks += check_callbacks(callbacks)
    run = VariationalRun(flow, optimizer, scheduler, history)
    flow.train()
    lines = progress and not is_terminal(sys.stderr)  # a log file: one line every 5% of steps
    shown = logs.showing_progress(lines)  # the lines through logging, on stderr by default
    shown.__enter__()
    bar = tqdm(total=steps, disable=not progress or lines, unit="step", dynamic_ncols=True)
    next_line = 0
    elbo_sum, loss_sum, count, started = 0.0, 0.0, 0, time.perf_counter()
    try:
        for hook in hooks:
            hook.on_fit_start(run)
        for step in range(steps):
            beta = annealing(step, anneal, beta0)
            z, log_q = flow.sample_and_log_prob(batch_size)
            log_p = log_prob(z)
            loss = (log_q - beta * log_p).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the variational objective became {loss.item()} at step {step + 1}; "
                    f"lower the learning rate (now {lr}), set clip, or check the target's "
                    f"log_prob for NaN"
                )
            gradient_step(optimizer, loss, clip)
            if scheduler is not None:
                scheduler.step()
            elbo_sum += (log_p - log_q).detach().mean()
            loss_sum += loss.detach()
            count += 1
            run.global_step = step + 1
            if hooks:  # (a float of the loss only where a hook takes it)
                value = loss.item()
                for hook in hooks:
                    hook.on_step_end(run, value)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                record = {
                    "step": step + 1,
                    "loss": float(loss_sum) / count,
                    "elbo": float(elbo_sum) / count,
                    "beta": beta,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - started, 3),
                }
                history.records.append(record)
                bar.update(count)
                bar.set_postfix_str(f"elbo {record['elbo']:.4f} beta {beta:.3f}", refresh=False)
                if lines and (step + 1 >= next_line or step + 1 == steps):
                    PROGRESS.info(_step_line(record, steps))
                    next_line = step + 1 + max(1, steps // 20)
                for hook in hooks:
                    hook.on_epoch_end(run, record)
                elbo_sum, loss_sum, count, started = 0.0, 0.0, 0, time.perf_counter()
                if run.stop_reason is not None:
                    history.stopped = run.stop_reason
                    break
    except KeyboardInterrupt:
        history.stopped = f"interrupted at step {len(history.records) * log_every + count}"
    except FloatingPointError as error:
        history.stopped = "diverged"
        error.history = history
        raise
    finally:
        bar.close()
        flow.eval()
        for hook in hooks:
            hook.on_fit_end(run)
        shown.__exit__(None, None, None)
    return history


def _step_line(record: dict, steps: int) -> str:
    """One line of progress for a log: ``step 2000/20000  elbo -1.2345  beta 1.000  lr
    9.8e-04  0.85 s`` (the mean ELBO over the record's steps)."""
    return (
        f"step {record['step']}/{steps}  elbo {record['elbo']:.4f}  beta {record['beta']:.3f}"
        f"  lr {record['lr']:.2e}  {record['seconds']:.3g} s"
    )
