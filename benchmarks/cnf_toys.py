"""Continuous flows on the 2-D toys, trained by maximum likelihood or by flow matching:
flowforge's CNF beside zuko's and torchcfm's, at the same network size and the same
wall-clock budget, interleaved in one run.

    python -m benchmarks.cnf_toys [--data two-moons 8gaussians checkerboard] [--minutes 6]
        [--models flowforge zuko ...] [--turn 30] [--threads 1] [--batch-size 256]
        [--lr 1e-3] [--save DIR] [--table]
    python -m benchmarks.cnf_toys --sampling DIR [--method rk4] [--steps 8]

For each toy (20,000 points: 16,000 to train, 2,000 to test, fixed by seed 0), both models
train by the plain Adam loop of zuko's documentation (``loss = -log q(x)``, one optimiser
step per batch of ``--batch-size``, constant ``--lr``), in turns of 30 s each until each has
used ``--minutes`` of wall-clock, so that a slow moment of the machine hits both alike. Then,
in float32 without gradients: the test NLL by each library's exact ``log_prob`` and its gap
to the true entropy H(p), the time of one 10,000-point ``log_prob``, the function
evaluations of that solve, and the largest change of a probe's log-density between scoring
it alone and inside the test batch (32 probes).

Models: flowforge's ``models.cnf(2, hidden=(64, 64, 64))`` (tanh, time read by every layer,
dopri5 at rtol = atol = 1e-5 on each sample's error) and zuko 1.6's ``zuko.flows.CNF(2,
hidden_features=(64, 64, 64))`` (ELU, six time frequencies at the input, its own Dormand-Prince
at rtol 1e-5, atol 1e-6 on the batch's error, adjoint gradients). ``--models flowforge-fm
flowforge-fm-ot flowforge-fm-sinkhorn`` adds the same flowforge model trained by flow matching
(``flowforge.training.FlowMatching``: independent, exact OT or entropic OT pairing at its
default ``reg``; no solve in training). ``--models torchcfm-icfm torchcfm-otcfm`` trains the
same flowforge network by torchcfm's documented loop (``ConditionalFlowMatcher`` or
``ExactOptimalTransportConditionalFlowMatcher`` at ``sigma=0``, ``loss = mean((v - u)^2)``);
torchcfm has no log-density, so its rows are scored by flowforge's exact solve of the field it
trained. After each turn every model's test NLL on the first 1,000 test points is recorded
(``curve``: training seconds, NLL - H(p)), from which the table of the time to a given quality
is read. ``--save DIR`` writes each trained model's weights there (safetensors), from which
``--sampling DIR`` times 10,000 samples by the adaptive solve and by a fixed-step method
(flowforge's `solver`), with the fixed-step samples' distance from the adaptive ones. Rows are
appended to ``--out`` (``benchmarks/cnf_toys.json``), keyed by toy, model and budget, as each
toy finishes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

import flowforge as ff
from benchmarks.harness import count_parameters

HIDDEN = (64, 64, 64)
CURVE_POINTS = 1_000  # test points scored after each turn
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
            if library != "flowforge":  # flowforge-fm(-ot, -sinkhorn): flow matching
                coupling = library.removeprefix("flowforge-fm").removeprefix("-") or "independent"
                self.objective = ff.training.FlowMatching(coupling=coupling)
        elif library.startswith("torchcfm"):  # torchcfm's loss on flowforge's network
            from torchcfm.conditional_flow_matching import (
                ConditionalFlowMatcher,
                ExactOptimalTransportConditionalFlowMatcher,
            )

            self.flow = ff.models.cnf(2, hidden=HIDDEN)
            self.field = self.flow.transform.field
            exact = library.endswith("otcfm")
            matcher = (
                ExactOptimalTransportConditionalFlowMatcher if exact else ConditionalFlowMatcher
            )
            self.matcher = matcher(sigma=0.0)
        else:
            import zuko

            self.flow = zuko.flows.CNF(2, hidden_features=HIDDEN)
            self.field = self.flow.transform.ode
        self.calls = 0
        self.field.register_forward_hook(self._count)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=1e-3)
        self.steps, self.seconds = 0, 0.0
        self.curve: list[tuple[float, float]] = []
        self.parameters = count_parameters(self.flow)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "zuko":
            return self.flow().log_prob(x)
        return self.flow.log_prob(x)

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One batch's loss, as each library's documentation writes it."""
        if self.library.startswith("torchcfm"):
            t, x_t, u_t = self.matcher.sample_location_and_conditional_flow(
                torch.randn_like(batch), batch
            )
            return torch.mean((self.field(x_t, t, None) - u_t) ** 2)
        if self.objective is not None:
            return self.objective(self.flow, batch, None, generator).mean()
        return -self.log_prob(batch).mean()

    def train_for(self, seconds: float, data: torch.Tensor, batch_size: int, generator) -> None:
        self.flow.train()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            index = torch.randint(len(data), (batch_size,), generator=generator)
            loss = self.loss(data[index], generator)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        self.seconds += time.perf_counter() - started

    @torch.no_grad()
    def score(self, test: torch.Tensor, entropy: float) -> None:
        """Record the test NLL - H(p) on the first `CURVE_POINTS` points (not timed)."""
        self.flow.eval()
        gap = -self.log_prob(test[:CURVE_POINTS]).mean().item() - entropy
        self.curve.append((round(self.seconds, 2), gap))

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
            "curve": self.curve,
        }

    def save(self, folder: Path, name: str) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.flow.state_dict().items()}
        save_file(state, str(folder / f"{name}-{self.library}.safetensors"))


LIBRARIES = [
    "flowforge",
    "zuko",
    "flowforge-fm",
    "flowforge-fm-ot",
    "flowforge-fm-sinkhorn",
    "torchcfm-icfm",
    "torchcfm-otcfm",
]
PEERS = {"zuko": "zuko", "torchcfm-icfm": "torchcfm", "torchcfm-otcfm": "torchcfm"}


def table(results: dict) -> str:
    """The rows of ``results`` as the Markdown table of the docs' results page."""
    lines = [
        "| data | model | minutes | steps | test NLL | s.e. | NLL - H(p) | 10k log_prob (s) |"
        " NFE | batch change (nats) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['data']} | {r['library']} | {r['train_minutes']:g} | {r['steps']} | "
            f"{r['test_nll']:.3f} | {r['se']:.3f} | {r['gap']:.3f} | "
            f"{r['log_prob_10k_s']:.2f} | {r['nfe_10k']} | {r['batch_change']:.1e} |"
        )
    return "\n".join(lines)


def first_time(curve: list, target: float) -> float | None:
    """The training seconds at which ``curve`` ((seconds, value) pairs; a value may be None,
    not finite) first reaches ``target``, or None."""
    return next((s for s, value in curve if value is not None and value <= target), None)


def quality_table(results: dict, minutes: float) -> str:
    """For each toy of the ``minutes`` run: the time each model first reached the quality
    that likelihood training (flowforge's ``flowforge`` row) ends the budget at (its last
    scored NLL - H(p) on the curve's test points), and flow matching's speed-up over it."""
    rows = [r for r in results["rows"] if "curve" in r and r["train_minutes"] == minutes]
    toys = list(dict.fromkeys(r["data"] for r in rows))
    models = [m for m in LIBRARIES if any(r["library"] == m for r in rows)]
    lines = [
        "| data | target NLL - H(p) | " + " | ".join(models) + " | speed-up of flow matching |",
        "|---|---|" + "---|" * len(models) + "---|",
    ]
    for toy in toys:
        by_model = {r["library"]: r for r in rows if r["data"] == toy}
        if "flowforge" not in by_model:
            continue
        target = by_model["flowforge"]["curve"][-1][1]
        times = {m: first_time(by_model[m]["curve"], target) for m in models if m in by_model}
        cells = ["-" if times.get(m) is None else f"{times[m]:.0f} s" for m in models]
        matching = [times[m] for m in models if m.startswith("flowforge-fm") and times.get(m)]
        speedup = f"{times['flowforge'] / min(matching):.1f}x" if matching else "-"
        lines.append(f"| {toy} | {target:.3f} | " + " | ".join(cells) + f" | {speedup} |")
    return "\n".join(lines)


def sampling(folder: Path, results: dict, method: str, steps: int, n: int = 10_000) -> None:
    """Add to each row whose weights ``folder`` holds the time of ``n`` samples by the
    adaptive solve and by ``steps`` fixed steps of ``method`` (flowforge's models; zuko's
    adaptive only), the evaluations of each, and the fixed-step samples' root-mean-square
    distance from the adaptive ones drawn from the same latent points."""
    from safetensors.torch import load_file

    for row in results["rows"]:
        path = folder / f"{row['data']}-{row['train_minutes']:g}min-{row['library']}.safetensors"
        if not path.exists():
            continue
        model = Model(row["library"], 0)
        model.flow.load_state_dict(load_file(str(path)))
        model.flow.eval()
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            started = time.perf_counter()
            if row["library"] == "zuko":
                model.calls = 0
                model.flow().sample((n,))
                row["sample_10k_s"], row["sample_nfe"] = time.perf_counter() - started, model.calls
                continue
            adaptive = model.flow.transform.map_inverse(z)
            row["sample_10k_s"] = time.perf_counter() - started
            row["sample_nfe"] = model.flow.transform.nfe["forward"]
            with ff.transforms.solver(model.flow, method=method, steps=steps):
                started = time.perf_counter()
                fixed = model.flow.transform.map_inverse(z)
                row["fixed_10k_s"] = time.perf_counter() - started
            row["fixed"] = f"{method} x {steps}"
            row["fixed_error"] = (fixed - adaptive).square().sum(-1).mean().sqrt().item()
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


def sampling_table(results: dict) -> str:
    """The sampling measurements of the rows that have them."""
    lines = [
        "| data | model | minutes | 10k samples, adaptive (s) | NFE | fixed steps | 10k samples"
        " (s) | RMS distance from adaptive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if "sample_10k_s" not in r:
            continue
        fixed = [r.get("fixed", "-"), "-", "-"]
        if "fixed_10k_s" in r:
            fixed[1:] = [f"{r['fixed_10k_s']:.2f}", f"{r['fixed_error']:.1e}"]
        lines.append(
            f"| {r['data']} | {r['library']} | {r['train_minutes']:g} | {r['sample_10k_s']:.2f} "
            f"| {r['sample_nfe']} | " + " | ".join(fixed) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["two-moons", "8gaussians", "checkerboard"])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["flowforge", "zuko"],
        choices=LIBRARIES,
        help="flowforge: likelihood; flowforge-fm(-ot, -sinkhorn): flow matching (independent "
        "/ exact OT / entropic OT pairing, the last needs POT); "
        "torchcfm-icfm / -otcfm: torchcfm's loss on the same network",
    )
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--turn", type=float, default=30.0, help="seconds of one model's turn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--save", type=Path, help="a folder for the trained weights")
    parser.add_argument(
        "--table", action="store_true", help="print the tables of --out; train nothing"
    )
    parser.add_argument(
        "--sampling",
        type=Path,
        help="time sampling from the weights a --save run wrote to this folder; train nothing",
    )
    parser.add_argument("--method", default="rk4", help="the fixed-step method of --sampling")
    parser.add_argument("--steps", type=int, default=8, help="its number of steps")
    args = parser.parse_args(argv)
    if args.sampling:
        torch.set_num_threads(args.threads)
        results = json.loads(args.out.read_text())
        sampling(args.sampling, results, args.method, args.steps)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(sampling_table(results))
        return
    if args.table:
        results = json.loads(args.out.read_text())
        print(table(results))
        for minutes in sorted({r["train_minutes"] for r in results["rows"] if "curve" in r}):
            print(f"\ntime to likelihood training's quality at {minutes:g} minutes:\n")
            print(quality_table(results, minutes))
        if any("sample_10k_s" in r for r in results["rows"]):
            print("\nsampling:\n")
            print(sampling_table(results))
        return
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    command = " ".join(["python -m benchmarks.cnf_toys", *(sys.argv[1:] if argv is None else argv)])
    earlier = results.pop("commands", []) + (
        [results.pop("command")] if "command" in results else []
    )
    results.update(
        commands=[c for c in earlier if c != command] + [command],
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        torch=torch.__version__,
    )
    libraries = []
    for library in args.models:
        peer = PEERS.get(library)
        try:
            if peer:
                importlib.import_module(peer)
            libraries.append(library)
        except ImportError:
            print(f"- {library}: {peer} not installed, skipped (pip install -e '.[bench]')")
    minutes = args.minutes
    for name in args.data:
        data = ff.datasets.load(name, n=20_000, seed=0)
        train, test = data.train.x, data.test.x
        models = [Model(library, 0) for library in libraries]
        for model in models:
            for group in model.optimizer.param_groups:
                group["lr"] = args.lr
        generators = [torch.Generator().manual_seed(1) for _ in models]
        budget = 60 * args.minutes
        while any(m.seconds < budget - 1e-9 for m in models):
            for model, generator in zip(models, generators, strict=True):
                if model.seconds < budget - 1e-9:
                    model.train_for(
                        min(args.turn, budget - model.seconds), train, args.batch_size, generator
                    )
                    model.score(test, data.entropy)
        for model in models:
            row = {"data": name, "library": model.library, "parameters": model.parameters}
            row |= {"steps": model.steps, "train_minutes": minutes}
            row |= model.evaluate(test, data.entropy)
            if args.save:
                model.save(args.save, f"{name}-{minutes:g}min")
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            key = (name, model.library, minutes)
            results["rows"] = [
                r for r in results["rows"] if (r["data"], r["library"], r["train_minutes"]) != key
            ] + [row]
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
