"""How fast could a training step be on this machine? The floor under cases A, B, C and D.

A training step's matrix products and its Adam update are work that no fusion of the other
operations removes. This script records every matrix product of one flowforge training step
of a case (forward and backward: the operation, its operands' shapes and strides), then
times in interleaved rounds, after warm-up: the real step; the recorded products alone,
replayed on operands of the same shapes and strides (warm in the cache, so the replay is
if anything faster than in the step); the same step with ``flow.log_prob`` compiled
(``torch.compile``, compiled before the timings); the fused Adam update alone, on the model's
parameters; the step of every installed peer; and a float32 1024x1024 matmul.

    floor = products alone + Adam alone

is what the step would cost if every other operation (activations, masks, the affine maps,
log-determinants, autograd) were free. The issue's targets can be met only if

- A and C: floor <= (the fastest peer's step) / 1.3;
- B: 6 x batch x conditioner weights / floor >= 80% of the matmul peak.

The table gives each step, eager and compiled, over the floor; the goal is at most 1.25x.

    python -m benchmarks.floor [--cases A B C D] [--rounds 20] [--threads 2] [--out FILE]
    python -m benchmarks.floor --report [--out FILE]

It prints one markdown table and writes the timings to ``benchmarks/floor.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import flowforge_models, peers
from .compile import compiled, reason
from .harness import interleaved, matmul, training_step

PRODUCTS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}
SPEED_UP = 1.3  # the target over the fastest peer (A, C)
STEP_OVER_FLOOR = 1.25  # the target of a step over the floor, eager or compiled
OURS = ("step", "compiled", "products", "adam", "matmul")  # the timings that are not peers
PEAK_SHARE = 0.8  # the target share of the matmul peak (B)


@dataclass(frozen=True)
class Product:
    """One recorded matrix product: the operation and its arguments, each tensor as its
    ``(shape, stride)``."""

    op: torch._ops.OpOverload
    args: tuple

    @property
    def flops(self) -> int:
        """``2 m k n`` (times the batch of a ``bmm``)."""
        *_, (a, _), (b, _) = (arg for arg in self.args if isinstance(arg, tuple))
        return 2 * int(torch.Size(a).numel()) * b[-1]


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.products: list[Product] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in PRODUCTS:
            described = tuple(
                (tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args
            )
            self.products.append(Product(func, described))
        return func(*args, **(kwargs or {}))


def record_products(call: Callable[[], object]) -> list[Product]:
    """Every matrix product that ``call()`` computes, forward and backward, in order."""
    with _Recorder() as recorder:
        call()
    return recorder.products


def operand(shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """A random tensor of this shape and stride (a stride may be 0: a broadcast)."""
    storage = 1 + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))
    return torch.randn(storage).as_strided(shape, stride)


def replay(products: list[Product]) -> Callable[[], None]:
    """A call that computes ``products`` again, on random operands of their shapes and
    strides (made once)."""
    calls = []
    for product in products:
        args = [operand(*arg) if isinstance(arg, tuple) else arg for arg in product.args]
        calls.append((product.op, args))

    def run() -> None:
        for op, args in calls:
            op(*args)

    return run


def adam_alone(module: torch.nn.Module) -> Callable[[], object]:
    """The fused Adam update of ``module``'s parameters (given random gradients), as in the
    benchmark's step."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    for p in parameters:
        p.grad = torch.randn_like(p)
    return torch.optim.Adam(parameters, lr=1e-4, fused=True).step


def run_case(case: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    batch = flowforge_models.batch(case, args.seed)
    ours = flowforge_models.build(case)
    step = training_step(ours, batch)
    step()  # Adam's state exists before the recording
    products = record_products(step)
    calls: dict[str, Callable[[], object]] = {
        "step": step,
        "products": replay(products),
        "adam": adam_alone(flowforge_models.build(case).module),
    }
    compiled_step = training_step(compiled(flowforge_models.build(case)), batch)
    error = None
    try:
        compiled_step()  # compiles, outside the timings
        calls["compiled"] = compiled_step
    except Exception as failure:  # a result (no C++ compiler, say), not a crash
        error = reason(failure)
    for peer in peers.build_installed(case, args.libraries):
        calls[peer.library] = training_step(peer, batch)
    mm, mm_flops = matmul()
    calls["matmul"] = mm
    timings = interleaved(calls, args.rounds, args.warmup)
    result = {
        "case": case,
        "title": flowforge_models.CASES[case][0],
        "timings": {name: timing.as_dict() for name, timing in timings.items()},
        "matmul_gflops": mm_flops / timings["matmul"].median / 1e9,
        "product_count": len(products),
        "product_flops": sum(p.flops for p in products),
        "peers": [name for name in calls if name not in OURS],
        "compile_error": error,
    }
    if case == "B":
        weights = flowforge_models.conditioner_weights(ours.module)
        result["step_flops"] = 6 * batch.shape[0] * weights
    return result


def verdict(case: dict) -> dict:
    """The floor, the target and whether the floor allows it, from one case's timings."""
    seconds = {name: timing["median_s"] for name, timing in case["timings"].items()}
    ms = {name: 1e3 * seconds[name] for name in ("step", "products", "adam")}
    floor = ms["products"] + ms["adam"]
    compiled_ms = 1e3 * seconds["compiled"] if "compiled" in seconds else None
    row = {**ms, "floor": floor, "peer": None, "peer_ms": None, "compiled": compiled_ms}
    if case["peers"]:
        fastest = min(case["peers"], key=seconds.__getitem__)
        row.update(peer=fastest, peer_ms=1e3 * seconds[fastest])
    if "step_flops" in case:
        peak = case["matmul_gflops"]
        share = case["step_flops"] / (floor / 1e3) / 1e9 / peak
        step_share = case["step_flops"] / (ms["step"] / 1e3) / 1e9 / peak
        row.update(
            target=f"{PEAK_SHARE:.0%} of {peak:.0f} GFLOP/s",
            at_floor=f"{share:.0%} of the peak (the step: {step_share:.0%})",
            reachable=share >= PEAK_SHARE,
        )
    elif row["peer_ms"] is not None:
        target = row["peer_ms"] / SPEED_UP
        row.update(
            target=f"{target:.2f} ms ({row['peer']} / {SPEED_UP})",
            at_floor=f"{row['peer_ms'] / floor:.2f}x over {row['peer']} "
            f"(the step: {row['peer_ms'] / ms['step']:.2f}x)",
            reachable=floor <= target,
        )
    else:
        row.update(target="no peer installed", at_floor="-", reachable=None)
    return row


def report(results: dict) -> str:
    lines = [
        "| case | step (ms) | compiled step (ms) | products alone | Adam alone | floor | "
        f"step / floor | compiled / floor (goal <= {STEP_OVER_FLOOR}) | fastest peer's step | "
        "target | at the floor | floor allows the target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        row = verdict(case)
        peer = "-" if row["peer"] is None else f"{row['peer_ms']:.2f} ({row['peer']})"
        allowed = {True: "yes", False: "**no**", None: "-"}[row["reachable"]]
        if row.get("compiled") is None:  # older records, or a compilation that failed
            compiled_ms = ratio = case.get("compile_error") or "-"
        else:
            compiled_ms = f"{row['compiled']:.2f}"
            ratio = _ratio(row["compiled"] / row["floor"])
        lines.append(
            f"| {case['case']}. {case['title']} | {row['step']:.2f} | {compiled_ms} | "
            f"{row['products']:.2f} ({case['product_count']} products) | {row['adam']:.2f} | "
            f"{row['floor']:.2f} | {_ratio(row['step'] / row['floor'])} | {ratio} | {peer} | "
            f"{row['target']} | {row['at_floor']} | {allowed} |"
        )
    return "\n".join(lines)


def _ratio(value: float) -> str:
    """A step over the floor, in bold where it misses the goal."""
    text = f"{value:.2f}x"
    return text if value <= STEP_OVER_FLOOR else f"**{text}**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["A", "B", "C", "D"])
    parser.add_argument("--libraries", nargs="+", default=list(peers.LIBRARIES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/floor.json"))
    parser.add_argument("--report", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.out.read_text())))
        return
    unknown = sorted(set(args.cases) - {"A", "B", "C", "D"})
    if unknown:
        parser.error(f"cases {unknown} have no floor here; expected some of A B C D")
    torch.set_num_threads(args.threads)
    results = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cases": [run_case(case, args) for case in args.cases],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
