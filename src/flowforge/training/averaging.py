r"""An exponential moving average of a flow's weights, evaluated in place of the weights the
optimiser holds (``ff.fit(ema=...)``).

After the optimiser's $t$-th step ($t = 1, 2, \dots$) the average is

$$
\bar\theta_1 = \theta_1, \qquad
\bar\theta_t = d_t\, \bar\theta_{t-1} + (1 - d_t)\, \theta_t, \qquad
d_t = \min\!\Big(d, \frac{1 + t}{10 + t}\Big),
$$

so that the early weights, far from the optimum, are forgotten within the first steps
whatever the decay $d$ (the warm-up of the average: $d_2 = 0.25$, $d_{90} = 0.91$). The
average of a noisy optimiser's weights lies nearer the optimum than its last iterate, so
the validation NLL of the average reaches a given value in fewer steps (``benchmarks/
time_to_quality.json``). It is torch's ``AveragedModel`` with this decay; the buffers
(`ActNorm`'s initialisation flag, say) are copied from the trained flow, not averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from flowforge.flows.flow import Flow
from flowforge.training.options import DECAY

WARMUP = 10  # the 10 of d_t = min(d, (1 + t) / (10 + t))


class WeightAverage:
    """The moving average of ``flow``'s parameters with decay ``decay`` (see the module).

    Example:
        >>> import flowforge as ff, torch
        >>> flow = ff.models.realnvp(2, layers=2, hidden=(8,))
        >>> average = WeightAverage(flow, decay=0.99)
        >>> average.update()  # after each optimiser step
        >>> average.flow().log_prob(torch.zeros(1, 2)).shape
        torch.Size([1])
    """

    def __init__(self, flow: Flow, decay: float) -> None:
        DECAY.check("decay", decay)
        self.source, self.decay, self.updates = flow, float(decay), 0
        self.model = AveragedModel(flow, multi_avg_fn=self._average, use_buffers=False)

    def _average(self, averaged: list[Tensor], current: list[Tensor], _: Tensor) -> None:
        t = self.updates + 1  # the step folded in (AveragedModel copies the first, t = 1)
        weight = 1.0 - min(self.decay, (1 + t) / (WARMUP + t))
        torch._foreach_lerp_(averaged, current, weight)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the flow's current parameters into the average."""
        self.model.update_parameters(self.source)
        self.updates += 1

    def flow(self) -> Flow:
        """The averaged flow, with the trained flow's buffers (do not train it)."""
        averaged: Flow = self.model.module
        with torch.no_grad():
            for mine, theirs in zip(averaged.buffers(), self.source.buffers(), strict=True):
                mine.copy_(theirs)
        averaged.train(self.source.training)
        return averaged

    def restart(self) -> None:
        """Start the average again from the flow's next weights (after a rollback)."""
        self.model.n_averaged.zero_()
        self.updates = 0

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged parameters and buffers, by the flow's names."""
        return {k: v.detach().clone() for k, v in self.flow().state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], updates: int) -> None:
        self.model.module.load_state_dict(state)
        self.model.n_averaged.fill_(updates)
        self.updates = updates
