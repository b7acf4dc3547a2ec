"""What the opt-in ``torch.compile`` path gains on flowforge's training step, when its compile
time pays off, and what the same ``torch.compile`` does for the peers' models.

    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python -m benchmarks.compile [--cases A C D] \\
        [--libraries nflows normflows zuko pyro] [--rounds 20] [--warmup 3] [--threads N]

(without the variable, a second run finds the compiled kernels in inductor's on-disk cache
and reports a compile time of a second or two: the cost of a warm start, not a cold one.)

For each case and each library (flowforge, then every installed peer, each model built by
``flowforge_models.build`` / ``peers.build`` as in ``python -m benchmarks``): the eager step
and the compiled step (``torch.compile`` with default options), all of them timed in the
same interleaved rounds after warm-up (``harness.interleaved``); the first compiled call's
time (the compilation, after one tiny warm-up compilation has paid the process's one-time
costs); the graph breaks that ``torch._dynamo.explain`` finds; and the
number of steps after which compiling has paid for itself,
``compile time / (eager - compiled)``. flowforge's compiled function is ``flow.log_prob``
(``flow.validate_args = False``), the opt-in path its README describes; a peer's is its
whole loss, ``Subject.loss`` (minus the mean log-density through the library's own call),
since the peers' models have no one method that is their density under every library.
``vs flowforge`` is the compiled peer's step time over compiled flowforge's (above 1:
flowforge is faster). A peer whose explanation or compilation raises is reported with the
reason on one line and left out of the timings. Writes ``benchmarks/compile.json``: one
record per case and library.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import flowforge_models, peers
from .harness import Subject, interleaved, training_step


def compiled(subject: Subject) -> Subject:
    """``subject`` with a ``torch.compile``d loss: flowforge's ``log_prob``, a peer's loss."""
    if subject.library == "flowforge":
        flow = subject.module
        log_prob = torch.compile(flow.log_prob)

        def loss(batch: torch.Tensor | None) -> torch.Tensor:
            return -log_prob(batch).mean()

    else:
        loss = torch.compile(subject.loss)
    return Subject(
        subject.library, subject.case, subject.module, loss, subject.sample, subject.parameters
    )


def target(subject: Subject) -> Callable[[torch.Tensor | None], torch.Tensor]:
    """The function that :func:`compiled` compiles (and ``explain`` inspects)."""
    return subject.module.log_prob if subject.library == "flowforge" else subject.loss


def build(library: str, case: str, seed: int) -> Subject:
    torch.manual_seed(seed)
    if library == "flowforge":
        return flowforge_models.build(case)
    return peers.build(library, case)


def reason(error: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def run_case(case: str, libraries: list[str], rounds: int, warmup: int, seed: int) -> list[dict]:
    batch = flowforge_models.batch(case)
    records: dict[str, dict] = {}
    eager: dict[str, Subject] = {}
    for library in libraries:
        records[library] = {"case": case, "library": library, "error": None}
        try:
            eager[library] = build(library, case, seed)
        except NotImplementedError as error:
            records[library]["error"] = f"no case {case}: {error}"
            continue
        torch._dynamo.reset()
        try:
            explained = torch._dynamo.explain(target(eager[library]))(batch)
            records[library]["graph_breaks"] = explained.graph_break_count
            records[library]["graphs"] = explained.graph_count
            records[library]["break_reasons"] = sorted(
                {b.reason.splitlines()[0][:200] for b in explained.break_reasons}
            )
        except Exception as error:  # any failure is a result, not a crash
            records[library]["explain_error"] = reason(error)
    torch._dynamo.reset()  # no compiled code is reset after this point: it would recompile
    steps: dict[str, Callable[[], object]] = {}
    for library, subject in eager.items():
        first = training_step(compiled(build(library, case, seed)), batch)
        start = time.perf_counter()
        try:
            first()
            records[library]["compile_s"] = time.perf_counter() - start
            first()  # a second call: one that recompiles or fails there shows here
        except Exception as error:
            records[library]["error"] = f"compile failed: {reason(error)}"
            continue
        steps[f"{library} eager"] = training_step(subject, batch)
        steps[f"{library} compiled"] = first
    timings = interleaved(steps, rounds, warmup)
    reference = timings.get("flowforge compiled")
    for library, r in records.items():
        if f"{library} compiled" not in timings:
            continue
        fast, slow = timings[f"{library} compiled"].median, timings[f"{library} eager"].median
        saved = slow - fast
        r.update(
            eager_ms=1e3 * slow,
            compiled_ms=1e3 * fast,
            speedup=slow / fast,
            break_even_steps=r["compile_s"] / saved if saved > 0 else None,
            vs_flowforge=fast / reference.median if reference is not None else None,
        )
    return list(records.values())


def warm_up_the_compiler() -> None:
    """Compile and run one tiny training step first, so that the one-time costs of a
    process's first compilation (importing inductor, starting its workers) are not charged
    to whichever library happens to be compiled first."""
    layer = torch.nn.Linear(4, 4)
    loss = torch.compile(lambda x: layer(x).square().mean())
    loss(torch.randn(8, 4)).backward()
    torch._dynamo.reset()


def row(r: dict) -> str:
    if "compiled_ms" not in r:
        breaks = r.get("graph_breaks", "")
        return f"| {r['case']} | {r['library']} | {breaks} | failed: {r['error']} ||||||"
    breaks = r.get("graph_breaks", f"explain failed: {r.get('explain_error')}")
    steps = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:,.0f}"
    ratio = "" if r["vs_flowforge"] is None else f"{r['vs_flowforge']:.2f}"
    return (
        f"| {r['case']} | {r['library']} | {breaks} | {r['compile_s']:.1f} | "
        f"{r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | {r['speedup']:.2f}x | {steps} | "
        f"{ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["A", "C", "D"])
    parser.add_argument("--libraries", nargs="+", default=list(peers.LIBRARIES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/compile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    libraries = ["flowforge", *peers.installed(args.libraries)]
    print(f"{torch.get_num_threads()} threads, {args.rounds} rounds after {args.warmup}")
    print(
        "| case | library | graph breaks | compile s | eager ms | compiled ms | speed-up | "
        "pays off | vs flowforge |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    warm_up_the_compiler()
    for case in args.cases:
        records = run_case(case, libraries, args.rounds, args.warmup, args.seed)
        results += records
        for r in records:
            print(row(r), flush=True)
        for r in records:
            if r.get("break_reasons"):
                print(f"- {case} {r['library']} breaks: " + "; ".join(r["break_reasons"]))
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
