"""Speed of one training step and one sampling call, flowforge beside nflows, normflows, zuko.

    python -m benchmarks [--cases A B C D E F] [--rounds 20] [--threads 2] [--out FILE]
    python -m benchmarks --report [--out FILE]   # the summary table of an earlier run

For each case every library's model is built to the same architecture (peers.py; the
parameter counts are printed), then one Adam training step (loss, backward, fused Adam) of
each, and a float32 1024x1024 matmul as the machine's own yardstick, are timed in interleaved
rounds after warm-up; then one sampling call of each, the same way. Prints markdown tables
(median ms, interquartile range, ratio of the peer's time to flowforge's: above 1 means
flowforge is faster) and writes every timing to a JSON file. A peer that is not installed
(``pip install -e ".[bench]"``) or cannot build a case is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from . import flowforge_models, peers
from .harness import interleaved, matmul, sampling_call, training_step


def subjects(case: str, libraries: list[str]) -> list:
    return [flowforge_models.build(case), *peers.build_installed(case, libraries)]


def table(rows: list[dict], what: str) -> str:
    lines = [
        f"| library | parameters | {what} median ms | IQR ms | peer / flowforge |",
        "|---|---|---|---|---|",
    ]
    reference = rows[0]["median_s"]
    for row in rows:
        ratio = row["median_s"] / reference
        lines.append(
            f"| {row['library']} | {row['parameters']:,} | {1e3 * row['median_s']:.2f} | "
            f"{1e3 * (row['q3_s'] - row['q1_s']):.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def run_case(case: str, args: argparse.Namespace) -> dict:
    title, _, samples = flowforge_models.CASES[case]
    print(f"\n### {case}. {title}\n")
    torch.manual_seed(args.seed)
    batch = flowforge_models.batch(case, args.seed)
    built = subjects(case, args.libraries)
    for subject in built:
        if subject.note:
            print(f"- {subject.library}: {subject.note}")
    mm, flops = matmul()
    steps = {s.library: training_step(s, batch) for s in built}
    train = interleaved({**steps, "matmul": mm}, args.rounds, args.warmup)
    draws = {s.library: sampling_call(s, samples) for s in built}
    sample = interleaved(draws, args.rounds, args.warmup)
    peak = flops / train["matmul"].median / 1e9
    result = {"case": case, "title": title, "matmul_gflops": peak, "train": [], "sample": []}
    for s in built:
        common = {"library": s.library, "parameters": s.parameters, "note": s.note}
        result["train"].append({**common, **train[s.library].as_dict()})
        result["sample"].append({**common, **sample[s.library].as_dict()})
    print(table(result["train"], "training step"), "\n")
    print(table(result["sample"], f"sampling {samples}"), "\n")
    print(f"float32 matmul in the same rounds: {peak:.1f} GFLOP/s")
    if case == "B":
        flow = built[0].module
        work = 6 * batch.shape[0] * flowforge_models.conditioner_weights(flow)
        achieved = work / train["flowforge"].median / 1e9
        result["flowforge_step_gflops"] = achieved
        print(
            f"flowforge's step: {achieved:.1f} GFLOP/s (6 x batch x conditioner weights), "
            f"{100 * achieved / peak:.0f}% of the measured matmul peak"
        )
    return result


def summary(results: dict) -> str:
    """One markdown table of every case: flowforge's median (± half the IQR) and each peer's
    median with its ratio to flowforge's (above 1: flowforge is faster)."""
    libraries = list(
        dict.fromkeys(row["library"] for case in results["cases"] for row in case["train"])
    )
    peers_ = [lib for lib in libraries if lib != "flowforge"]
    lines = [
        "| case | | flowforge ms (± IQR/2) | " + " | ".join(peers_) + " |",
        "|---|---|---|" + "---|" * len(peers_),
    ]
    for case in results["cases"]:
        for kind, label in (("train", "training step"), ("sample", "sampling")):
            rows = {row["library"]: row for row in case[kind]}
            ours = rows["flowforge"]
            cells = [f"{1e3 * ours['median_s']:.2f} ± {5e2 * (ours['q3_s'] - ours['q1_s']):.2f}"]
            for lib in peers_:
                row = rows.get(lib)
                cells.append(
                    "—"
                    if row is None
                    else f"{1e3 * row['median_s']:.2f} ({row['median_s'] / ours['median_s']:.2f}x)"
                )
            title = f"{case['case']}. {case['title']}" if kind == "train" else ""
            lines.append(f"| {title} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(flowforge_models.CASES))
    parser.add_argument("--libraries", nargs="+", default=list(peers.LIBRARIES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument(
        "--report", action="store_true", help="print the summary table of --out and exit"
    )
    args = parser.parse_args()
    if args.report:
        print(summary(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(f"machine: {machine}, float32, seed {args.seed}, {args.rounds} rounds")
    results = [run_case(case, args) for case in args.cases]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "cases": results}, indent=1))
    print("\n" + summary({"machine": machine, "cases": results}))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
