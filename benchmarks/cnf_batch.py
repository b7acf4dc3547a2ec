"""Does a point's log-density depend on the other points of its batch? flowforge's CNF beside
zuko's, at the same network size and tolerances.

    python -m benchmarks.cnf_batch [--probes 32] [--crowd 1000] [--seed 0]

Both models: a 2-D continuous flow whose field is an MLP with three hidden layers of 64, its
weights moved away from the initialisation by Gaussian noise of std 0.3 (the same for every
model of a seed, so that the field is far from zero and not smooth everywhere), rtol 1e-5
and atol 1e-6, in float64. ``--probes`` points are scored alone (one at a time) and inside
batches of ``--crowd`` others of three kinds: standard normal points, points spread 4x wider,
and a batch that holds one far outlier (|x| = 8). The table gives the largest change of a
probe's log-density between its batches and alone, with the evaluations of each solve.
zuko's ``CNF`` (1.6) solves every batch with one Dormand-Prince step size from one error
norm over the whole batch; flowforge's ``models.cnf`` keeps one step size per sample
(torchode). Writes ``benchmarks/cnf_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import flowforge as ff

HIDDEN = (64, 64, 64)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def flowforge_model(seed: int):
    torch.manual_seed(seed)
    flow = ff.models.cnf(2, hidden=HIDDEN, rtol=1e-5, atol=1e-6).double()
    perturb(flow, seed).eval()
    return flow.log_prob


def zuko_model(seed: int):
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.CNF(2, hidden_features=HIDDEN, rtol=1e-5, atol=1e-6).double()
    perturb(flow, seed).eval()
    return lambda x: flow().log_prob(x)


def crowds(n: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    normal = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    outlier = normal.clone()
    outlier[0] = torch.tensor([8.0, 0.0])
    return {"normal": normal, "4x wider": 4 * normal, "one outlier": outlier}


def measure(log_prob, probes: torch.Tensor, crowd_size: int, seed: int) -> dict[str, float]:
    with torch.no_grad():
        alone = torch.cat([log_prob(p[None]) for p in probes])
        changes = {}
        for name, crowd in crowds(crowd_size, seed).items():
            together = log_prob(torch.cat([probes, crowd]))[: len(probes)]
            changes[name] = (together - alone).abs().max().item()
    return changes


def table(result: dict) -> str:
    """The rows of ``result`` as the Markdown table of the docs' results page."""
    names = list(crowds(1, 0))
    lines = [
        "| library | " + " | ".join(f"among {name} points" for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in result["rows"]:
        lines.append(f"| {row['library']} | " + " | ".join(f"{row[n]:.1e}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--crowd", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    probes = torch.randn(args.probes, 2, generator=torch.Generator().manual_seed(args.seed))
    probes = probes.double()
    models = {"flowforge": flowforge_model}
    try:
        import zuko  # noqa: F401

        models["zuko"] = zuko_model
    except ImportError:
        print("- zuko: not installed, skipped (pip install -e '.[bench]')")
    rows = []
    for library, build in models.items():
        changes = measure(build(args.seed), probes, args.crowd, args.seed)
        rows.append({"library": library, **changes, "largest": max(changes.values())})
    names = list(crowds(1, 0))
    print(f"largest |log p(x in a batch of {args.crowd}) - log p(x alone)| over {args.probes}")
    print("probes (nats, float64, rtol 1e-5, atol 1e-6)")
    print(f"{'library':<10}" + "".join(f"{name:>14}" for name in names))
    for row in rows:
        print(f"{row['library']:<10}" + "".join(f"{row[name]:>14.2e}" for name in names))
    result = {
        "command": "python -m benchmarks.cnf_batch " + " ".join(argv or []),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    path = Path(__file__).with_name("cnf_batch.json")
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
