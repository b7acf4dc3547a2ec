r"""Training objectives: what `flowforge.fit` minimises, each a small named piece of its loop.

An objective turns a batch into per-sample losses (`Objective.prepare`, then
`Objective.losses`). The loop draws the batch, asks the objective for the losses, averages
them, steps the optimiser, and records the mean under the
objective's ``record`` name; checkpoints, resume, rollback and progress are the loop's.

- `Likelihood` (``"likelihood"``): $-\log q(x \mid c)$, the negative log-likelihood.
- `FlowMatching` (``"flow-matching"``): conditional flow matching (Lipman et al. 2023) on the
  linear path, for continuous flows: with $x_0$ from the base, $x_1$ the data and
  $t \sim U(0, 1)$,

  $$
  x_t = (1 - (1 - \sigma_{\min}) t)\, x_0 + t\, x_1, \qquad
  u_t = x_1 - (1 - \sigma_{\min})\, x_0, \qquad
  \ell = \| v_\theta(x_t, t \mid c) - u_t \|^2,
  $$

  with $x_0$ and $x_1$ paired independently, by minibatch optimal transport (Tong et al.
  2024: the pairing of the batch that minimises $\sum_i \|x_0^{(i)} - x_1^{(\pi(i))}\|^2$,
  exactly, `ot_pairing`), or by draws from the entropic plan (`entropic_pairing`). No ODE is
  solved in training.

Examples:
    >>> objective = get("flow-matching", coupling="ot")
    >>> objective.record
    'train_fm_loss'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from flowforge.flows.distributions import StandardNormal
from flowforge.flows.flow import Flow
from flowforge.runtime import extras
from flowforge.training import options
from flowforge.transforms.continuous import ContinuousFlow

Coupling = Literal["independent", "ot", "sinkhorn"]


class Objective(ABC):
    """What `flowforge.fit` minimises: per-sample losses of a batch, in two steps.

    `prepare` turns the global batch into the loss's inputs, random draws included (noise,
    times, a pairing across the batch), each with the batch as its first dimension;
    `losses` runs the model on (a part of) them. A data-parallel rank prepares the whole
    global batch from the generator every rank shares, then evaluates its own rows, so that
    the sum over ranks is the one-process loss. Calling the objective does both.

    ``record`` names the epoch's mean training loss in the metrics (``"train_nll"`` for the
    likelihood); ``draws`` says whether `prepare` draws for the whole batch (then every rank
    needs the global batch); ``solves`` says whether its losses run the flow's transform (so
    that the layers' statistics and penalties belong to the step); ``check`` refuses, in one line, a
    flow the objective cannot train.
    """

    name: str
    record: str
    solves: bool = True
    draws: bool = False  # whether `prepare` draws for the global batch (noise, a pairing)

    def describe(self) -> dict[str, object]:
        """The name and options, as a checkpoint records them (a resume must not change
        them)."""
        return {"name": self.name, **vars(self)}  # the options an instance was given

    def check(self, flow: Flow) -> None:  # noqa: B027 - most objectives train any flow
        """Raise a one-line ValueError if ``flow`` cannot be trained by this objective."""

    def prepare(
        self, x: Tensor, context: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor | None, ...]:
        """The inputs of `losses` for the batch ``x`` ``(batch, *event_shape)``; random draws
        come from ``generator`` (a CPU ``torch.Generator``), so that a resumed run draws what
        the uninterrupted one did."""
        return x, context

    @abstractmethod
    def losses(self, flow: Flow, *inputs: Tensor | None) -> Tensor:
        """The per-sample losses ``(rows,)`` of rows of `prepare`'s inputs."""

    def __call__(
        self,
        flow: Flow,
        x: Tensor,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The per-sample losses ``(batch,)`` of the batch ``x``."""
        return self.losses(flow, *self.prepare(x, context, generator))


class ObjectiveLoss(nn.Module):
    """An objective's `losses` on a flow as a module, which `flowforge.fit` calls (wrapped in
    DistributedDataParallel when it trains on several processes, whose forward must hold the
    whole computation for the gradients to be averaged)."""

    def __init__(self, objective: Objective, flow: Flow) -> None:
        super().__init__()
        self.objective, self.flow = objective, flow

    def forward(self, *inputs: Tensor | None) -> Tensor:
        return self.objective.losses(self.flow, *inputs)


class Likelihood(Objective):
    r"""Maximum likelihood: the loss of a sample is $-\log q(x \mid c)$."""

    name, record = "likelihood", "train_nll"

    def losses(self, flow: Flow, *inputs: Tensor | None) -> Tensor:
        x, context = inputs
        return -flow.log_prob(x, context)


class FlowMatching(Objective):
    r"""Conditional flow matching on the linear path (see the module's equations).

    Args:
        coupling: ``"independent"`` (I-CFM), ``"ot"`` (exact minibatch optimal transport,
            OT-CFM, over the global batch; see `ot_pairing`) or ``"sinkhorn"`` (pairs drawn
            from the entropic plan, `entropic_pairing`; needs the ``ot`` extra).
        reg: the entropic regulariser of ``"sinkhorn"``, relative to the batch's largest
            squared distance (towards 0: the exact pairing; large: the independent one).
        sigma_min: the width $\sigma_{\min}$ of the path's end at the data (0: straight
            lines from noise to data).

    Needs a continuous flow (``ff.models.cnf``) on the standard normal base.
    """

    name, record, solves, draws = "flow-matching", "train_fm_loss", False, True

    def __init__(
        self, coupling: Coupling = "independent", sigma_min: float = 0.0, reg: float = 0.05
    ) -> None:
        schema = options.FLOW_MATCHING
        self.coupling = schema["coupling"].check("coupling", coupling)
        self.sigma_min = schema["sigma_min"].check("sigma_min", sigma_min)
        if coupling == "sinkhorn":  # recorded (and fixed on resume) only where it applies
            reg = schema["reg"].check("reg", reg)
            if not extras.installed("ot"):
                raise extras.MissingExtraError("coupling 'sinkhorn'", "ot")
            self.reg = reg

    def check(self, flow: Flow) -> None:
        if not isinstance(flow.transform, ContinuousFlow):
            raise ValueError(
                "objective 'flow-matching' trains continuous flows (ff.models.cnf), got a "
                f"{type(flow.transform).__name__}; use objective='likelihood'"
            )
        if self.coupling != "independent" and flow.context_dim:
            raise ValueError(
                f"coupling {self.coupling!r} pairs the batch's noise with its data whatever "
                "their contexts, so the noise would depend on the context and bias q(x | c); "
                "use coupling='independent' for a conditional flow"
            )
        if not isinstance(flow.base, StandardNormal):
            raise ValueError(
                "objective 'flow-matching' needs the standard normal base (base='normal'), "
                f"got {type(flow.base).__name__}"
            )

    def prepare(
        self, x: Tensor, context: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor | None, ...]:
        """``(x_t, t, u_t, context)``: the points of the path, their times and the target
        velocities."""
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device)
        if self.coupling == "ot":
            noise = noise[ot_pairing(noise, x)]
        elif self.coupling == "sinkhorn":
            noise = noise[entropic_pairing(noise, x, self.reg, generator)]
        shrink = 1 - self.sigma_min
        x_t = (1 - shrink * t[:, None]) * noise + t[:, None] * x
        return x_t, t, x - shrink * noise, context

    def losses(self, flow: Flow, *inputs: Tensor | None) -> Tensor:
        x_t, t, target, context = inputs
        inner = None if context is None else flow._embed(context)
        return (flow.transform.field(x_t, t, inner) - target).square().sum(-1)


def ot_pairing(source: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""For each row of ``target``, the row of ``source`` it is paired with by exact optimal
    transport of the squared distance: ``source[pairing(source, target)]`` lines up with
    ``target``.

    For equal batches, the permutation $\pi$ that minimises
    $\sum_i \|s_{\pi(i)} - t_i\|^2$: by POT's network simplex (``ot.emd``, the ``ot``
    extra; 1.6x faster than the assignment at 256 points, 3x at 1,024) where it is installed
    and reports an optimal vertex, else by ``scipy.optimize.linear_sum_assignment``. The
    optimum is unique for data in general position, so both give the same pairing. For
    batches of different sizes (POT only), each target row's partner is drawn from its
    column of the exact plan $P$ between the two uniform batches, $i_j \sim P_{\cdot j} /
    \sum_i P_{ij}$, so that each source row is drawn $m / n$ times in expectation.

    Shapes: ``(n, dim)``, ``(m, dim)`` -> ``(m,)`` indices into ``source``.
    """
    cost = _squared_distances(source, target)
    if len(source) != len(target):
        if not extras.installed("ot"):
            raise extras.MissingExtraError("an optimal-transport pairing of unequal batches", "ot")
        import ot

        n, m = cost.shape
        plan = ot.emd(_uniform(n), _uniform(m), cost, numItermax=max(_MAX_ITER, 20 * n * m))
        return _draw(plan, generator).to(source.device)
    order = _simplex_pairing(cost) if extras.installed("ot") else None
    if order is None:
        sources, targets = linear_sum_assignment(cost)
        order = np.empty_like(sources)
        order[targets] = sources
    return torch.from_numpy(order).to(source.device)


def entropic_pairing(
    source: Tensor, target: Tensor, reg: float, generator: torch.Generator | None = None
) -> Tensor:
    r"""For each row of ``target``, a row of ``source`` drawn from the entropic transport plan
    $P$ between the two uniform batches (``ot.sinkhorn``, the ``ot`` extra), on the squared
    distances divided by their largest: $i_j \sim P_{\cdot j} / \sum_i P_{ij}$, with
    replacement, so that each source row is drawn $m P_{i\cdot} = m / n$ times in expectation.

    Shapes: ``(n, dim)``, ``(m, dim)`` -> ``(m,)`` indices into ``source``.
    """
    import ot

    cost = _squared_distances(source, target)
    plan = ot.sinkhorn(_uniform(len(source)), _uniform(len(target)), cost / cost.max(), reg)
    return _draw(plan, generator).to(source.device)


def _squared_distances(source: Tensor, target: Tensor) -> np.ndarray:
    """The ``(n, m)`` float64 squared distances between the rows of two batches of points of
    one shape."""
    if source.ndim != 2 or source.shape[1:] != target.shape[1:]:
        raise ValueError(
            "a pairing needs two batches of points of one dimension, (n, dim) and (m, dim), "
            f"got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    return (
        torch.cdist(source.detach().double().cpu(), target.detach().double().cpu()) ** 2
    ).numpy()


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _draw(plan: np.ndarray, generator: torch.Generator | None) -> Tensor:
    """For each column of a transport plan ``(n, m)``, a row drawn in proportion to it."""
    columns = torch.from_numpy(plan).T.clamp_min(0) + 1e-300  # drawable where it underflows
    return torch.multinomial(columns, 1, generator=generator)[:, 0]


_MAX_ITER = 100_000  # the simplex's iterations, at least (20 n^2 for large batches)


def _simplex_pairing(cost: np.ndarray) -> np.ndarray | None:
    """The optimal permutation from POT's exact transport plan between two uniform batches
    (a vertex of the Birkhoff polytope: one entry per row), or None where POT stopped short
    of the optimum or returned a plan that is not a permutation."""
    import ot

    n = len(cost)
    plan, log = ot.emd(
        _uniform(n), _uniform(n), cost, numItermax=max(_MAX_ITER, 20 * n * n), log=True
    )
    order = plan.argmax(0)
    optimal = log["result_code"] == 1 and (plan > 0).sum(1).max() == 1
    return order if optimal and len(np.unique(order)) == n else None


OBJECTIVES = {"likelihood": Likelihood, "flow-matching": FlowMatching}


def get(objective: str | Objective, **options: object) -> Objective:
    """An objective from its name (``"likelihood"``, ``"flow-matching"``) and options, or
    ``objective`` itself."""
    if isinstance(objective, Objective):
        if options:
            raise ValueError("options go to the objective's constructor, not beside it")
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[objective](**options)
