r"""Compile the training step when the run is long enough to repay the compilation.

``torch.compile`` makes a flow's training step 1.2-1.9x faster on flowforge's benchmark
cases but costs 7-19 s of compilation first (``benchmarks/compile.json``, 2-core x86-64), so
it pays only after a few thousand steps. `StepCompiler` decides from what it measures:

1. The first ``WARMUP_STEPS`` steps run eagerly (data-dependent initialisation, such as
   `ActNorm`'s, happens there); the eager step time $t_e$ is the median of the intervals
   between them.
2. ``"auto"`` compiles when the $n$ steps left repay the expected cost with a margin:

   $$ n \, t_e \, (1 - 1/g) > m \, C, $$

   with the expected gain $g$ = ``EXPECTED_GAIN``, the compile time $C$ = ``COMPILE_SECONDS``
   and the margin $m$ = ``MARGIN``: about five minutes of eager steps.
3. Once compiled, the median of the next ``CHECK_STEPS`` intervals is the compiled step time
   $t_c$; ``"auto"`` goes back to the eager step if $t_c \ge t_e$.
4. A compilation or a compiled call that raises is reported in one line and the step is
   taken eagerly from then on (``"auto"`` and ``True`` alike): the failed call changed
   nothing, so the run goes on as an eager one would.

What happened is an entry of ``History.events`` (``"compiled"``, ``"compile reverted"``,
``"compile failed"``); a run that stays eager records nothing. Batches of another size than
the first (an epoch's last, partial batch) run eagerly, so that one static graph serves the
run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.training.options import FIT

COMPILE_SECONDS = 20.0  # above the 7-19 s measured for flowforge's cases in benchmarks.compile
EXPECTED_GAIN = 1.15  # below the smallest measured gain (1.18, case C)
MARGIN = 2.0  # compile only if the expected saving is twice the expected cost
WARMUP_STEPS = 6  # eager steps before deciding: the first is a warm-up, then 4 intervals
CHECK_STEPS = 10  # compiled steps timed before "auto" keeps the compiled step


def pays_off(steps_left: int, eager_seconds: float) -> bool:
    r"""Whether compiling now is expected to save time: $n t_e (1 - 1/g) > m C$."""
    saving = steps_left * eager_seconds * (1.0 - 1.0 / EXPECTED_GAIN)
    return saving > MARGIN * COMPILE_SECONDS


class StepCompiler:
    """Calls ``module(*inputs)`` eagerly or through ``torch.compile``, as decided above.

    Args:
        module: the training step's loss module (`ObjectiveLoss`, or its DDP wrapper); its
            inputs have the batch as their first dimension.
        mode: ``"auto"``, ``True`` (compile after the warm-up steps, whatever the run's
            length) or ``False`` (never).
        steps_left: the steps this run still plans to take.
        record: called with each decision's event (a dict).
        say: shows a one-line message (the failure of a compilation).
        eager_only: a reason why ``"auto"`` stays eager whatever the timings (a distributed
            run, whose ranks must decide alike; a step that solves an ODE), or None.

    Example:
        >>> import flowforge as ff, torch
        >>> from flowforge.training.objectives import Likelihood, ObjectiveLoss
        >>> loss = ObjectiveLoss(Likelihood(), ff.models.realnvp(2, layers=2, hidden=(8,)))
        >>> step = StepCompiler(loss, "auto", steps_left=10, record=print, say=print)
        >>> step(torch.randn(4, 2), None).shape
        torch.Size([4])
    """

    def __init__(
        self,
        module: nn.Module,
        mode: str | bool,
        steps_left: int,
        record: Callable[[dict[str, Any]], None],
        say: Callable[[str], None],
        eager_only: str | None = None,
    ) -> None:
        FIT["compile"].check("compile", mode)
        self.module, self.mode, self.steps_left = module, mode, steps_left
        self.record, self.say, self.eager_only = record, say, eager_only
        self.compiled: Callable[..., Tensor] | None = None
        self.state = "eager" if mode is False else "warming up"
        self.calls, self.batch, self.last = 0, None, None
        self.eager_intervals: list[float] = []
        self.compiled_intervals: list[float] = []
        self.eager_seconds: float | None = None
        self.compiled_seconds: float | None = None
        self.compile_seconds: float | None = None

    def __call__(self, *inputs: Tensor | None) -> Tensor:
        now = time.perf_counter()
        interval, self.last = (None if self.last is None else now - self.last), now
        self.calls += 1
        rows = len(inputs[0])
        self.batch = rows if self.batch is None else self.batch
        if rows != self.batch or self.state in ("eager", "failed"):
            return self.module(*inputs)
        if self.state == "warming up":
            if interval is not None and self.calls > 2:  # the first step warms the caches
                self.eager_intervals.append(interval)
            if self.calls <= WARMUP_STEPS:
                return self.module(*inputs)
            self._decide()
            if self.state == "eager":
                return self.module(*inputs)
        elif self.state == "checking" and interval is not None:
            self.compiled_intervals.append(interval)
            if len(self.compiled_intervals) >= CHECK_STEPS:
                self._check()
                if self.state == "eager":
                    return self.module(*inputs)
        return self._compiled_call(inputs)

    def _decide(self) -> None:
        self.eager_seconds = statistics.median(self.eager_intervals or [0.0])
        left = self.steps_left - self.calls + 1
        if self.mode is True or (self.eager_only is None and pays_off(left, self.eager_seconds)):
            self.compiled = torch.compile(self.module, dynamic=False)
            self.state = "compiling"
            return
        self.state = "eager"  # a short run or an eager-only one: nothing to record

    def _compiled_call(self, inputs: tuple[Tensor | None, ...]) -> Tensor:
        started = time.perf_counter()
        try:
            out = self.compiled(*inputs)
        except Exception as error:  # any failure of the compiler
            self.state, self.compiled = "failed", None
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            self.record({"event": "compile failed", "error": f"{type(error).__name__}: {reason}"})
            self.say(
                f"flowforge fit: torch.compile failed ({type(error).__name__}: {reason}); "
                "training continues without compiling"
            )
            return self.module(*inputs)
        if self.state == "compiling":
            self.compile_seconds = time.perf_counter() - started
            self.state = "checking" if self.mode == "auto" else "compiled"
            if self.mode is True:
                self._report("compiled")
            self.last = time.perf_counter()  # the compilation is not a step's interval
        return out

    def _check(self) -> None:
        self.compiled_seconds = statistics.median(self.compiled_intervals)
        if self.compiled_seconds >= self.eager_seconds:
            self.state, self.compiled = "eager", None
            self._report("compile reverted")
        else:
            self.state = "compiled"
            self._report("compiled")

    def _report(self, event: str) -> None:
        entry: dict[str, Any] = {
            "event": event,
            "step": self.calls,
            "mode": self.mode,
            "compile_s": None if self.compile_seconds is None else round(self.compile_seconds, 3),
            "eager_ms": None if self.eager_seconds is None else 1e3 * self.eager_seconds,
        }
        if self.compiled_seconds is not None:
            entry["compiled_ms"] = 1e3 * self.compiled_seconds
        self.record(entry)
