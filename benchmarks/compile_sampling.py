"""Whether compiling a long sampling pass pays (issue 36): ``flow.sample(n)`` eager against
``torch.compile`` of the same call, on a 2-D Real NVP, an 8-D NSF and NICE on MNIST's 784
dimensions, with random (not identity) weights.

    OMP_NUM_THREADS=1 python -m benchmarks.compile_sampling [--rounds 5] [--threads 1]

The eager and the compiled pass are timed in the same interleaved rounds after a warm-up
(``harness.interleaved``); ``first_call_s`` is the first compiled call (the compilation);
``passes_to_repay`` is ``first_call_s / (eager - compiled)`` (infinite where the compiled
pass is not faster). Writes ``benchmarks/compile_sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import flowforge as ff

from .__main__ import cpu_model
from .harness import interleaved

CASES = {
    "realnvp-2d": (lambda: ff.models.realnvp(2, layers=8, hidden=(64, 64)), 100_000),
    "nsf-8d": (lambda: ff.models.nsf(8, layers=4, hidden=(64, 64)), 20_000),
    "nice-mnist": (lambda: ff.models.nice(784), 2_000),
}


def measure(name: str, rounds: int) -> dict:
    build, n = CASES[name]
    torch.manual_seed(0)
    flow = build().eval()
    for module in flow.modules():  # conditioners start at zero: give them random weights
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    compiled = torch.compile(flow.sample)
    with torch.no_grad():
        start = time.perf_counter()
        compiled(n)
        first = time.perf_counter() - start
        timings = interleaved(
            {"eager": lambda: flow.sample(n), "compiled": lambda: compiled(n)}, rounds, 1
        )
    eager, fast = timings["eager"].median, timings["compiled"].median
    return {
        "case": name,
        "n": n,
        "eager_s": eager,
        "compiled_s": fast,
        "speedup": eager / fast,
        "first_call_s": first,
        "passes_to_repay": first / (eager - fast) if eager > fast else math.inf,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in CASES:
        rows.append(measure(name, args.rounds))
        row = rows[-1]
        print(
            f"{name:12} n {row['n']:>7,}  eager {row['eager_s']:.3f} s  compiled "
            f"{row['compiled_s']:.3f} s  {row['speedup']:.2f}x  compile {row['first_call_s']:.1f}"
            f" s  repaid after {row['passes_to_repay']:.0f} passes",
            flush=True,
        )
    result = {
        "machine": f"{cpu_model()}, {args.threads} thread(s)",
        "torch": torch.__version__,
        "rows": [{k: (None if v == math.inf else v) for k, v in r.items()} for r in rows],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
