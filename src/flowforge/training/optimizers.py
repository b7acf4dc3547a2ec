r"""The optimiser and the learning-rate schedule of a run: flowforge's own, or the user's.

flowforge's own are Adam (AdamW with weight decay) in its fused form and a cosine decay of
the rate to 0 over all steps, $\eta_t = \tfrac12 \eta_0 (1 + \cos(\pi t / T))$. A user's are
any ``torch.optim.Optimizer`` and any learning-rate scheduler, each given either built (an
optimiser over the flow's parameters; a scheduler of that optimiser) or as a factory that
builds it (``lambda params: torch.optim.SGD(params, lr=0.1)``; ``lambda opt:
StepLR(opt, 1000)``), which is what a run that moves the flow to another device or resumes in
a new process needs.

A scheduler is stepped after every training step, so its periods count steps; a
``ReduceLROnPlateau`` is stepped after every epoch with the validation NLL.

Examples:
    >>> import torch
    >>> flow = torch.nn.Linear(2, 2)
    >>> sgd = build_optimizer(lambda p: torch.optim.SGD(p, lr=0.1), flow)
    >>> plan = build_scheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 10), sgd, "cosine", 100)
    >>> type(plan.scheduler).__name__, plan.every
    ('StepLR', 'step')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

OptimizerSpec = Optimizer | Callable[[list[nn.Parameter]], Optimizer]
SchedulerSpec = LRScheduler | ReduceLROnPlateau | Callable[[Optimizer], Any]
SCHEDULES = ("cosine", "plateau")


def adam(
    parameters: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Adam (AdamW with ``weight_decay``) in its fused form, one kernel for the whole update,
    where this torch and device have it (on a CPU it spends ~40% less time than the foreach
    form on NICE's 19M parameters; ``python -m benchmarks``), else the default form.
    ``betas`` and ``eps`` are torch's defaults unless given."""
    parameters = list(parameters)
    optimizer_cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    settings = {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "eps": eps}
    try:
        return optimizer_cls(parameters, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):
        return optimizer_cls(parameters, **settings)


def build_optimizer(
    optimizer: OptimizerSpec | None, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0
) -> Optimizer:
    """The run's optimiser: ``adam(model.parameters(), lr, weight_decay)`` for None, else the
    user's (built, or built here from the factory), which must hold only ``model``'s
    parameters (a subset trains the rest frozen)."""
    if optimizer is None:
        return adam(model.parameters(), lr, weight_decay)
    if not isinstance(optimizer, Optimizer):
        if not callable(optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer or a function of the parameters "
                f"that returns one, got {type(optimizer).__name__}"
            )
        made = optimizer(list(model.parameters()))
        if not isinstance(made, Optimizer):
            raise TypeError(
                f"optimizer(parameters) returned a {type(made).__name__}; expected a "
                "torch.optim.Optimizer"
            )
        optimizer = made
    own = {id(p) for p in model.parameters()}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if not all(id(p) in own for p in held):
        raise ValueError(
            "the optimizer holds parameters that are not the flow's (was it built for another "
            "model?); build it from flow.parameters(), or pass a factory: "
            "optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    return optimizer


@dataclass
class SchedulePlan:
    """A scheduler and when the loop steps it: after every training ``"step"``, after every
    epoch with the ``"validation"`` NLL, or never (no scheduler)."""

    scheduler: Any
    every: str | None
    own: bool  # flowforge's cosine or plateau schedule (re-planned when epochs change)


def build_scheduler(
    scheduler: SchedulerSpec | None,
    optimizer: Optimizer,
    schedule: str | None,
    total_steps: int | None,
) -> SchedulePlan:
    """The run's schedule: the user's ``scheduler`` (built, or built here from the factory),
    else the named ``schedule`` (``"cosine"`` over ``total_steps``, ``"plateau"``, None);
    ``total_steps`` is None for a stream of unknown length, which the cosine cannot plan."""
    if scheduler is None:
        if schedule == "cosine" and total_steps is None:
            raise ValueError(
                "the cosine schedule needs the number of steps, and this DataLoader has no "
                "len(); give schedule=None or a scheduler=, or a dataset with __len__"
            )
        if schedule == "cosine":
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
            return SchedulePlan(cosine, "step", True)
        if schedule == "plateau":
            plateau = ReduceLROnPlateau(optimizer, factor=0.5, patience=10)
            return SchedulePlan(plateau, "validation", True)
        return SchedulePlan(None, None, True)
    if not isinstance(scheduler, LRScheduler | ReduceLROnPlateau):
        if not callable(scheduler):
            raise TypeError(
                "scheduler must be a learning-rate scheduler or a function of the optimizer "
                f"that returns one, got {type(scheduler).__name__}"
            )
        made = scheduler(optimizer)
        if not isinstance(made, LRScheduler | ReduceLROnPlateau):
            raise TypeError(
                f"scheduler(optimizer) returned a {type(made).__name__}; expected a "
                "torch.optim.lr_scheduler scheduler"
            )
        scheduler = made
    if scheduler.optimizer is not optimizer:
        raise ValueError(
            "the scheduler belongs to another optimizer than the run's; build it from the "
            "run's optimizer, or pass a factory: scheduler=lambda opt: StepLR(opt, 1000)"
        )
    every = "validation" if isinstance(scheduler, ReduceLROnPlateau) else "step"
    return SchedulePlan(scheduler, every, False)


def describe(obj: Any) -> str | None:
    """The class of an optimiser or scheduler as ``module.Name`` (a checkpoint's setting)."""
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_options(
    optimizer: OptimizerSpec | None,
    scheduler: SchedulerSpec | None,
    lr: float,
    weight_decay: float,
    schedule: str | None,
) -> None:
    """One-line errors for options that contradict each other: ``lr`` and ``weight_decay``
    configure flowforge's Adam, ``schedule`` names flowforge's schedule."""
    if optimizer is not None and (lr != 1e-3 or weight_decay != 0.0):
        raise ValueError(
            "lr= and weight_decay= configure flowforge's Adam; with optimizer= given, set them "
            "on your optimizer"
        )
    if scheduler is not None and schedule not in ("cosine", None):
        raise ValueError(
            f"give schedule= or scheduler=, not both (got schedule={schedule!r} and a scheduler)"
        )


__all__ = [
    "SCHEDULES",
    "OptimizerSpec",
    "SchedulePlan",
    "SchedulerSpec",
    "adam",
    "build_optimizer",
    "build_scheduler",
    "check_options",
    "describe",
]
