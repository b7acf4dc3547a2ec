"""What the opt-in ``torch.compile`` path gains on flowforge's training step, and when its
compile time pays off.

    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python -m benchmarks.compile [--cases A C D]

(without the variable, a second run finds the compiled kernels in inductor's on-disk cache
and reports a compile time of a second or two: the cost of a warm start, not a cold one.)

For each case: the eager step and the compiled step (``torch.compile`` of the loss, default
mode), timed in interleaved rounds after warm-up; the first compiled call's time (the
compilation); the graph breaks that ``torch._dynamo.explain`` finds in ``log_prob``; and the
number of steps after which compiling has paid for itself,
``compile time / (eager - compiled)``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import flowforge_models
from .harness import Subject, interleaved, training_step


def compiled(subject: Subject) -> Subject:
    flow = subject.module
    log_prob = torch.compile(flow.log_prob)

    def loss(batch: torch.Tensor | None) -> torch.Tensor:
        return -log_prob(batch).mean()

    return Subject(subject.library, subject.case, flow, loss, subject.sample, subject.parameters)


def run_case(case: str, rounds: int, warmup: int) -> dict:
    batch = flowforge_models.batch(case)
    eager = flowforge_models.build(case)
    torch._dynamo.reset()
    breaks = torch._dynamo.explain(eager.module.log_prob)(batch).graph_break_count
    torch._dynamo.reset()
    fast = compiled(flowforge_models.build(case))
    first = training_step(fast, batch)
    start = time.perf_counter()
    first()
    compile_seconds = time.perf_counter() - start
    timings = interleaved({"eager": training_step(eager, batch), "compiled": first}, rounds, warmup)
    saved = timings["eager"].median - timings["compiled"].median
    return {
        "case": case,
        "graph_breaks": breaks,
        "compile_s": compile_seconds,
        "eager_ms": 1e3 * timings["eager"].median,
        "compiled_ms": 1e3 * timings["compiled"].median,
        "speedup": timings["eager"].median / timings["compiled"].median,
        "break_even_steps": compile_seconds / saved if saved > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["A", "C", "D"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/compile.json"))
    args = parser.parse_args()
    print("| case | graph breaks | compile s | eager ms | compiled ms | speed-up | pays off |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for case in args.cases:
        r = run_case(case, args.rounds, args.warmup)
        results.append(r)
        steps = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:,.0f}"
        print(
            f"| {case} | {r['graph_breaks']} | {r['compile_s']:.1f} | {r['eager_ms']:.2f} | "
            f"{r['compiled_ms']:.2f} | {r['speedup']:.2f}x | {steps} |",
            flush=True,
        )
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
