"""Quality at equal budget: every library's Real NVP of case A (8 affine couplings of 2x64,
the same parameter count) trained the same way on 2-D toys, then its test NLL.

    python -m benchmarks.quality [--data two-moons 8gaussians checkerboard] [--epochs 100]

Each library gets the same data (``flowforge.datasets.load(name, n=20_000, seed=0)``: 16,000
training and 2,000 test points), the same shuffled batches of 256, Adam at 1e-3 (fused, no
schedule), the same number of steps and the same seed; the table gives the test NLL in nats
with its standard error and the gap to the true entropy H(p). Writes
``benchmarks/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from flowforge import datasets

from . import flowforge_models, peers


def train_and_test(subject, data, epochs: int, seed: int) -> dict:
    optimizer = torch.optim.Adam(subject.module.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(seed)
    x = data.train.x
    started = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(256):
            optimizer.zero_grad(set_to_none=True)
            subject.loss(x[index]).backward()
            optimizer.step()
    with torch.no_grad():
        nll = torch.cat([subject.loss(b[None]).reshape(1) for b in data.test.x])
    return {
        "nll": nll.mean().item(),
        "se": (nll.std() / math.sqrt(len(nll))).item(),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["two-moons", "8gaussians", "checkerboard"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality.json"))
    args = parser.parse_args()
    libraries = ["flowforge", *(lib for lib in peers.LIBRARIES if peers.available(lib))]
    print("| data | library | test NLL (nats) | s.e. | NLL - H(p) | minutes |")
    print("|---|---|---|---|---|---|")
    results = []
    for name in args.data:
        data = datasets.load(name, n=20_000, seed=0)
        for library in libraries:
            torch.manual_seed(args.seed)
            subject = (
                flowforge_models.build("A") if library == "flowforge" else peers.build(library, "A")
            )
            r = {
                "data": name,
                "library": library,
                **train_and_test(subject, data, args.epochs, args.seed),
            }
            r["gap"] = r["nll"] - data.entropy
            results.append(r)
            print(
                f"| {name} | {library} | {r['nll']:.3f} | {r['se']:.3f} | {r['gap']:.3f} | "
                f"{r['seconds'] / 60:.1f} |",
                flush=True,
            )
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
