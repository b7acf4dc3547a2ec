"""Continuous flows trained by maximum likelihood on the 2-D toys: flowforge's CNF beside
zuko's, at the same network size and the same wall-clock budget, interleaved in one run.

    python -m benchmarks.cnf_toys [--data two-moons 8gaussians checkerboard] [--minutes 6]
        [--threads 1] [--batch-size 256] [--lr 1e-3] [--table]

For each toy (20,000 points: 16,000 to train, 2,000 to test, fixed by seed 0), both models
train by the plain Adam loop of zuko's documentation (``loss = -log q(x)``, one optimiser
step per batch of ``--batch-size``, constant ``--lr``), in turns of 30 s each until each has
used ``--minutes`` of wall-clock, so that a slow moment of the machine hits both alike. Then,
in float32 without gradients: the test NLL by each library's exact ``log_prob`` and its gap
to the true entropy H(p), the time of one 10,000-point ``log_prob``, the function
evaluations of that solve, and the largest change of a probe's log-density between scoring
it alone and inside the test batch (32 probes).

Models: flowforge's ``models.cnf(2, hidden=(64, 64, 64))`` (tanh, time read by every layer,
dopri5 at rtol = atol = 1e-5 on each sample's error) and zuko 1.6's
``zuko.flows.CNF(2, hidden_features=(64, 64, 64))`` (ELU, six time frequencies at the input,
its own Dormand-Prince at rtol 1e-5, atol 1e-6 on the batch's error, adjoint gradients).
``--models flowforge-fm flowforge-fm-ot`` adds the same flowforge model trained by flow
matching (``flowforge.training.FlowMatching``, independent or OT pairing; no solve in
training). Rows are appended to ``--out`` (``benchmarks/cnf_toys.json``) as each toy finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import flowforge as ff

HIDDEN = (64, 64, 64)
TURN = 30.0  # seconds a model trains before the other's turn
OUT = Path(__file__).with_name("cnf_toys.json")


class Model:
    """One library's CNF: its loss, its exact log-density and a counter of its evaluations."""

    def __init__(self, library: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.library = library
        self.objective = None  # the likelihood
        if library.startswith("flowforge"):
            self.flow = ff.models.cnf(2, hidden=HIDDEN)
            self.field = self.flow.transform.field
            if library != "flowforge":  # flowforge-fm, flowforge-fm-ot: flow matching
                coupling = "ot" if library.endswith("-ot") else "independent"
                self.objective = ff.training.FlowMatching(coupling=coupling)
        else:
            import zuko

            self.flow = zuko.flows.CNF(2, hidden_features=HIDDEN)
            self.field = self.flow.transform.ode
        self.calls = 0
        self.field.register_forward_hook(self._count)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=1e-3)
        self.steps, self.seconds = 0, 0.0
        self.parameters = sum(p.numel() for p in self.flow.parameters())

    def _count(self, *_: object) -> None:
        self.calls += 1

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.library.startswith("flowforge"):
            return self.flow.log_prob(x)
        return self.flow().log_prob(x)

    def train_for(self, seconds: float, data: torch.Tensor, batch_size: int, generator) -> None:
        self.flow.train()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            index = torch.randint(len(data), (batch_size,), generator=generator)
            if self.objective is None:
                loss = -self.log_prob(data[index]).mean()
            else:
                batch = data[index]
                loss = self.objective.losses(self.flow, self.flow, batch, None, generator).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        self.seconds += time.perf_counter() - started

    @torch.no_grad()
    def evaluate(self, test: torch.Tensor, entropy: float) -> dict[str, float]:
        self.flow.eval()
        nll = -self.log_prob(test)
        points = test.repeat(math.ceil(10_000 / len(test)), 1)[:10_000]
        self.calls = 0
        started = time.perf_counter()
        self.log_prob(points)
        seconds = time.perf_counter() - started
        # forward hooks also see the evaluations inside torch.func's vmap: one per solve step
        evaluations = self.calls
        probes = test[:32]
        alone = torch.cat([self.log_prob(p[None]) for p in probes])
        together = self.log_prob(test)[:32]
        return {
            "test_nll": nll.mean().item(),
            "se": nll.std().item() / math.sqrt(len(nll)),
            "gap": nll.mean().item() - entropy,
            "log_prob_10k_s": round(seconds, 3),
            "nfe_10k": evaluations,
            "batch_change": (together - alone).abs().max().item(),
        }


def table(results: dict) -> str:
    """The rows of ``results`` as the Markdown table of the docs' results page."""
    lines = [
        "| data | library | steps | test NLL | s.e. | NLL - H(p) | 10k log_prob (s) | NFE |"
        " batch change (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['data']} | {r['library']} | {r['steps']} | {r['test_nll']:.3f} | "
            f"{r['se']:.3f} | {r['gap']:.3f} | {r['log_prob_10k_s']:.2f} | {r['nfe_10k']} | "
            f"{r['batch_change']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["two-moons", "8gaussians", "checkerboard"])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["flowforge", "zuko"],
        choices=["flowforge", "flowforge-fm", "flowforge-fm-ot", "zuko"],
        help="flowforge: likelihood; flowforge-fm(-ot): flow matching (independent / OT)",
    )
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--table", action="store_true", help="print the table of --out; train nothing"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    results.update(
        command="python -m benchmarks.cnf_toys " + " ".join(argv or []),
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        torch=torch.__version__,
    )
    libraries = [m for m in args.models if m != "zuko"]
    if "zuko" in args.models:
        try:
            import zuko  # noqa: F401

            libraries.append("zuko")
        except ImportError:
            print("- zuko: not installed, skipped (pip install -e '.[bench]')")
    for name in args.data:
        data = ff.datasets.load(name, n=20_000, seed=0)
        train, test = data.train.x, data.test.x
        models = [Model(library, 0) for library in libraries]
        for model in models:
            for group in model.optimizer.param_groups:
                group["lr"] = args.lr
        generators = [torch.Generator().manual_seed(1) for _ in models]
        budget = 60 * args.minutes
        while any(m.seconds < budget for m in models):
            for model, generator in zip(models, generators, strict=True):
                if model.seconds < budget:
                    turn = min(TURN, budget - model.seconds)
                    model.train_for(turn, train, args.batch_size, generator)
        for model in models:
            row = {"data": name, "library": model.library, "parameters": model.parameters}
            row |= {"steps": model.steps, "train_minutes": round(model.seconds / 60, 2)}
            row |= model.evaluate(test, data.entropy)
            print(json.dumps(row), flush=True)
            results["rows"] = [
                r for r in results["rows"] if (r["data"], r["library"]) != (name, model.library)
            ] + [row]
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
