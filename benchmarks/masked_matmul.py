"""Would block-triangular products speed up MADE training (case C)?

A MADE's masks are staircases once its units are sorted by degree: about half of every
masked weight matrix is zero, and a product by it could skip that half. This script times,
for each masked layer of case C's MADE (64 -> 256 -> 256 -> 128, batch 512), the three
products of a training step (forward ``W h``, input gradient ``W^T g``, weight gradient
``g h^T``) dense, as every library computes them, and split into ``k`` row blocks, each
multiplying only the columns its rows can see (the rest of the block's columns are zero).
Activations are ``(units, batch)``, so every block is a contiguous slice of rows and BLAS
reads and writes it in place (no copy). The mask itself is not applied: only the
arithmetic is timed.

    python -m benchmarks.masked_matmul [--blocks 2 4 8] [--rounds 30] [--threads 2]

It prints one markdown table: microseconds per product (median over interleaved rounds),
then all of a training step's products (the three layers' three products, times the five
MADEs; the first MADE's input gradient is not needed, but is counted) in milliseconds and
relative to the dense ones.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from .harness import interleaved

BATCH, FEATURES, HIDDEN, MADES = 512, 64, 256, 5


def staircase(degrees_out: Tensor, degrees_in: Tensor, strict: bool) -> Tensor:
    """The MADE mask ``(out, in)`` of sorted degrees: a row sees every column of degree at
    most (``strict``: below) its own, a prefix of the columns."""
    if strict:
        return degrees_out[:, None] > degrees_in[None, :]
    return degrees_out[:, None] >= degrees_in[None, :]


def case_c_masks() -> list[Tensor]:
    """The masks of one of case C's MADEs (2 hidden layers of 256, two outputs per feature)
    with the hidden units sorted by degree."""
    inputs = torch.arange(1, FEATURES + 1)
    hidden = torch.sort(torch.arange(HIDDEN) % (FEATURES - 1) + 1).values
    outputs = inputs.repeat_interleave(2)
    return [
        staircase(hidden, inputs, strict=False),
        staircase(hidden, hidden, strict=False),
        staircase(outputs, hidden, strict=True),
    ]


def blocks(mask: Tensor, k: int) -> list[tuple[int, int, int]]:
    """``k`` row blocks ``(start, end, columns)``: rows ``start:end`` see only the first
    ``columns`` columns."""
    rows = mask.shape[0]
    edges = [round(rows * j / k) for j in range(k + 1)]
    seen = mask.cumsum(1).argmax(1) + 1  # one past each row's last visible column
    return [(a, b, int(seen[a:b].max())) for a, b in itertools.pairwise(edges) if b > a]


def products(
    mask: Tensor, k: int | None, weight: Tensor, h: Tensor, g: Tensor
) -> dict[str, Callable[[], Tensor]]:
    """The forward ``W h``, input-gradient ``W^T g`` and weight-gradient ``g h^T`` products of
    ``mask``'s layer, ``weight`` ``(out, in)``, ``h`` ``(in, batch)``, ``g`` ``(out, batch)``:
    dense if ``k`` is None, else in ``k`` row blocks. Each call returns its output buffer;
    with a masked ``weight`` the blocked results equal the dense ones (on the mask's support
    for the weight gradient)."""
    out, inp = mask.shape
    batch = h.shape[1]
    # Zeros: columns that no row sees (the last input) get no gradient; nor do the weights
    # outside the blocks.
    y, dh, dw = h.new_empty(out, batch), h.new_zeros(inp, batch), h.new_zeros(out, inp)
    if k is None:
        return {
            "forward": lambda: torch.mm(weight, h, out=y),
            "input grad": lambda: torch.mm(weight.T, g, out=dh),
            "weight grad": lambda: torch.mm(g, h.T, out=dw),
        }
    parts = blocks(mask, k)
    # The input gradient by column blocks: columns c0:c1 receive from every row that sees
    # them, the rows from the first block whose extent passes c0 on (a suffix).
    edges = [0, *(c for _, _, c in parts)]
    column_parts = []
    for c0, c1 in itertools.pairwise(edges):
        if c1 > c0:
            first = next(a for a, _, c in parts if c > c0)
            column_parts.append((c0, c1, first))

    def forward() -> Tensor:
        for a, b, c in parts:
            torch.mm(weight[a:b, :c], h[:c], out=y[a:b])
        return y

    def input_grad() -> Tensor:
        for c0, c1, first in column_parts:
            torch.mm(weight[first:, c0:c1].T, g[first:], out=dh[c0:c1])
        return dh

    def weight_grad() -> Tensor:
        for a, b, c in parts:
            torch.mm(g[a:b], h[:c].T, out=dw[a:b, :c])
        return dw

    return {"forward": forward, "input grad": input_grad, "weight grad": weight_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inner", type=int, default=20, help="products per timed call")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    masks = case_c_masks()
    variants: list[int | None] = [None, *args.blocks]
    calls: dict[tuple, Callable[[], object]] = {}
    for layer, mask in enumerate(masks):
        out, inp = mask.shape
        weight, h, g = torch.randn(out, inp), torch.randn(inp, BATCH), torch.randn(out, BATCH)
        for k in variants:
            for what, product in products(mask, k, weight, h, g).items():

                def repeated(product: Callable[[], object] = product) -> None:
                    for _ in range(args.inner):
                        product()

                calls[(layer, k, what)] = repeated
    timings = interleaved(calls, args.rounds, args.warmup)
    micro = {key: 1e6 * t.median / args.inner for key, t in timings.items()}
    shapes = [f"{m.shape[1]} -> {m.shape[0]}" for m in masks]
    print(f"float32, batch {BATCH}, {torch.get_num_threads()} threads, us per product\n")
    print("| layer | product | dense | " + " | ".join(f"{k} blocks" for k in args.blocks) + " |")
    print("|---|---|---" + "|---" * len(args.blocks) + "|")
    for layer, shape in enumerate(shapes):
        for what in ("forward", "input grad", "weight grad"):
            cells = [f"{micro[(layer, k, what)]:.0f}" for k in variants]
            print(f"| {shape} | {what} | " + " | ".join(cells) + " |")
    totals = {k: sum(v for (_, kk, _), v in micro.items() if kk == k) for k in variants}
    nonzero = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    per_step = [f"{MADES * totals[k] / 1000:.2f}" for k in variants]
    ratios = [f"{totals[k] / totals[None]:.2f}" for k in args.blocks]
    print(f"| all | a step's products ({MADES} MADEs), ms | " + " | ".join(per_step) + " |")
    print("| all | relative to dense | 1.00 | " + " | ".join(ratios) + " |")
    print(f"\nnon-zero fraction of the masks: {nonzero:.2f}")


if __name__ == "__main__":
    main()
