"""The schema of the training options: what ``ff.fit`` and ``ff.fit_variational`` take,
checked by the same `flowforge.runtime.options.Option` whether a value comes as a keyword, a
key of a run's YAML config (`flowforge.runs.config`) or a flag of ``flowforge fit`` /
``flowforge vi`` (`flowforge.cli`).

    >>> check(FIT, epochs=0)
    Traceback (most recent call last):
    ValueError: epochs must be a positive integer, got 0

Options whose values are objects (an optimizer, callbacks, a device) are checked where they
are used.
"""

from __future__ import annotations

from flowforge.runtime.options import (
    BOOLEAN,
    Option,
    check,
    choice,
    integer,
    number,
)
from flowforge.training.optimizers import SCHEDULES
from flowforge.training.precision import PRECISIONS

POSITIVE_INT = Option(integer(1))
POSITIVE = Option(number(0.0, strict=True))
SEED = Option(integer(0, 2**63 - 1, what="an integer from 0 to 2**63 - 1"))
DECAY = Option(number(0.0, strict=True, below=1.0, what="a decay in (0, 1) such as 0.99"))

# ff.fit's options (and the run config's keys of the same names)
FIT: dict[str, Option] = {
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE,
    "weight_decay": Option(number(0.0)),
    "schedule": Option(choice(*SCHEDULES), nullable=True),
    "clip": Option(POSITIVE.kind, nullable=True),
    "ema": Option(DECAY.kind, nullable=True),
    "keep_best": Option(BOOLEAN),
    "patience": Option(POSITIVE_INT.kind, nullable=True),
    "resume": Option(BOOLEAN),
    "checkpoint_every": Option(integer(1, what="a positive number of steps"), nullable=True),
    "divergence_threshold": Option(POSITIVE.kind, nullable=True),
    "rollbacks": Option(integer(0)),
    "compile": Option(choice("auto", True, False, spelled={"true": True, "false": False})),
    "precision": Option(choice(*PRECISIONS)),
    "seed": Option(SEED.kind, nullable=True),
    "progress": Option(BOOLEAN),
}

# ff.fit_variational's options beside those of the same names in FIT
VARIATIONAL: dict[str, Option] = {
    **{name: FIT[name] for name in ("batch_size", "lr", "clip", "seed", "progress")},
    "steps": POSITIVE_INT,
    "log_every": POSITIVE_INT,
    "anneal": Option(integer(0, what="a number of steps >= 0"), nullable=True),
    "schedule": Option(choice("cosine"), nullable=True),
}

# FlowMatching's options (the run config's "coupling", "coupling_reg", "sigma_min")
FLOW_MATCHING: dict[str, Option] = {
    "coupling": Option(choice("independent", "ot", "sinkhorn")),
    "sigma_min": Option(number(0.0, below=1.0, what="a number in [0, 1)")),
    "reg": POSITIVE,
}

__all__ = ["DECAY", "FIT", "FLOW_MATCHING", "SEED", "VARIATIONAL", "check"]
