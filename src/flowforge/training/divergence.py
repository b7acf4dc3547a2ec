r"""Catching a diverging training run at the step, and rolling it back to its last good state.

A step's loss $\ell_t$ is *bad* if it is not finite, if it exceeds the running loss by
more than ``threshold`` running spreads, or if it exceeds the first step's loss
$\ell_1$ by ``threshold`` times its size:

$$
\ell_t > \min\Bigl(m_{t-1} + \tau \max\bigl(s_{t-1},\ 10^{-2}(1 + |m_{t-1}|)\bigr),\
\ell_1 + \tau (1 + |\ell_1|)\Bigr), \qquad \tau = \text{threshold},
$$

where $m_t = \beta m_{t-1} + (1 - \beta)\ell_t$ and
$s_t = \beta s_{t-1} + (1 - \beta)|\ell_t - m_{t-1}|$ are exponential moving averages
over about 50 good steps ($\beta = 0.98$); the floor on the spread keeps a loss that
has flattened out from flagging its own noise. The first ``warmup`` steps are held to the
second bound only, while the averages settle; the second bound catches a run that explodes
in its first steps (a flow starts as its base distribution, so its first loss is modest).
Bad losses do not enter the averages.

`Rollback` keeps a copy of the model's and the optimiser's state every few good steps;
after a bad step the trainer restores it, halves the learning rate and goes on, at most
``rollbacks`` times.

Examples:
    >>> monitor = DivergenceMonitor(threshold=10.0, warmup=3)
    >>> [monitor.check(loss) for loss in (3.0, 2.9, 2.8, 2.7, 2.75)]
    [True, True, True, True, True]
    >>> monitor.check(float("nan")), monitor.check(1e6), monitor.limit() < 3.5
    (False, False, True)
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from flowforge.training.results import History

BETA = 0.98
SPREAD_FLOOR = 1e-2


class DivergenceMonitor:
    """Running mean and spread of the loss; `check()` says whether a loss is good.

    Args:
        threshold: spreads above the running loss that count as an explosion; ``None``
            checks finiteness only.
        warmup: steps checked for finiteness only, while the averages settle.
    """

    def __init__(self, threshold: float | None = 10.0, warmup: int = 20) -> None:
        if threshold is not None and not (threshold > 0 and math.isfinite(threshold)):
            raise ValueError(f"divergence threshold must be a positive number, got {threshold}")
        self.threshold = threshold
        self.warmup = warmup
        self.mean: float | None = None
        self.spread = 0.0
        self.steps = 0
        self.first: float | None = None

    def limit(self) -> float:
        """The largest good loss at the next step."""
        if self.threshold is None or self.first is None:
            return math.inf
        limit = self.first + self.threshold * (1.0 + abs(self.first))
        if self.steps >= self.warmup:
            floor = SPREAD_FLOOR * (1.0 + abs(self.mean))
            limit = min(limit, self.mean + self.threshold * max(self.spread, floor))
        return limit

    def check(self, loss: float) -> bool:
        """Whether ``loss`` is good; a good loss updates the running averages."""
        if not math.isfinite(loss) or loss > self.limit():
            return False
        if self.mean is None:
            self.mean = self.first = loss
        else:
            self.spread = BETA * self.spread + (1 - BETA) * abs(loss - self.mean)
            self.mean = BETA * self.mean + (1 - BETA) * loss
        self.steps += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "spread": self.spread, "steps": self.steps, "first": self.first}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.spread, self.steps = state["mean"], state["spread"], state["steps"]
        self.first = state["first"]


class Rollback:
    """The last good state of a model and its optimiser, kept in memory.

    The learning-rate schedule is not rolled back: its position follows the steps taken, and
    `restore()` lowers the rate from where the schedule stands."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.state: dict[str, Any] | None = None
        self.step: int | None = None

    def keep(self, step: int) -> None:
        """Copy the current state as the good state of global step ``step``."""
        self.state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }
        self.step = step

    def restore(self, scheduler: Any = None, lr_factor: float = 0.5) -> list[float]:
        """Go back to the kept state, with the current learning rates times ``lr_factor``
        (and the ``scheduler``'s base rates); return the new rates."""
        if self.state is None:
            raise RuntimeError("no good state was kept")
        rates = [group["lr"] for group in self.optimizer.param_groups]
        initial = [group.get("initial_lr") for group in self.optimizer.param_groups]
        self.model.load_state_dict(self.state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(self.state["optimizer"]))
        for group, rate, first in zip(self.optimizer.param_groups, rates, initial, strict=True):
            group["lr"] = rate
            if first is not None:
                group["initial_lr"] = first
        scale_learning_rate(self.optimizer, scheduler, lr_factor)
        return [group["lr"] for group in self.optimizer.param_groups]


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Multiply the current and the schedule's base learning rates by ``factor``, so that the
    schedule goes on from the lowered rate."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    if scheduler is not None and hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def finite_parameters(model: nn.Module) -> bool:
    """Whether every parameter and floating buffer of ``model`` is finite (one sync)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


__all__ = ["DivergenceMonitor", "Rollback", "finite_parameters", "scale_learning_rate"]


class DivergenceError(FloatingPointError):
    """Training diverged and rolling back did not help; ``history`` holds what was done, and
    the flow holds the last good weights."""

    def __init__(self, message: str, history: History | None = None) -> None:
        super().__init__(message)
        self.history = history
