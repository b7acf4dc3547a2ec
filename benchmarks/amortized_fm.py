"""Amortized inference on the two-moons simulator: a conditional CNF trained by flow matching,
beside flowforge's NSF trained by likelihood and sbi's FMPE, at the same simulation budget.

    python -m benchmarks.amortized_fm [--simulations 5000] [--seeds 1] [--epochs 1000]
        [--hidden 128,128,128,128] [--models ...] [--threads 2] [--merge] [--quick]

The task is sbi's two-moons (flowforge's `TwoMoons`: theta ~ U[-1, 1]^2, x 2-D, a bimodal,
crescent-shaped posterior sampled exactly by rejection and with its density on a grid). For
each seed, one set of ``--simulations`` pairs (theta, x) trains:

- ``flowforge cnf (flow matching)``: ``ff.models.cnf(2, hidden=(128,) * 4, context_dim=2)``
  (``--hidden``; at (64, 64, 64) and 400 epochs it stops at KL 1.2 nats, c2st 0.77: the thin
  crescents need the width) fitted by ``ff.fit(..., objective="flow-matching")`` for
  ``--epochs`` (1,000) epochs (batches of
  256, Adam 1e-3, cosine schedule; the independent coupling, as a conditional flow needs);
  its log-density by the exact adaptive solve;
- ``flowforge nsf (likelihood)``: ``ff.models.nsf(2, layers=5, hidden=(50, 50),
  context_dim=2)``, ``ff.fit`` by likelihood with 10 % of the simulations for validation,
  early stopping after 20 epochs without improvement, the best epoch kept (sbi's defaults);
- ``sbi fmpe``: ``sbi.inference.FMPE(prior)`` with its defaults (its MLP vector field,
  ``train()`` with early stopping), its ``log_prob`` and ``sample`` from ``build_posterior()``.

Then, at 5 observations drawn from the joint: ``KL`` = E_p[log p(theta | x) - log q(theta |
x)] by 2,000 exact posterior draws (nats, 0 for the truth), and sbi's ``c2st`` between 2,000
draws of q and of the exact posterior (0.5: indistinguishable); over 200 simulations with
200 posterior draws each, simulation-based calibration (`flowforge.inference.sbc_ranks`): the
smallest chi-square p-value of the two coordinates' ranks (`sbc_uniformity`, 20 bins;
small: miscalibrated); the training time in seconds. Writes
``benchmarks/amortized_fm.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import flowforge as ff
from benchmarks.harness import count_parameters
from benchmarks.quality import seed_mean
from flowforge.inference.calibration import sbc_ranks, sbc_uniformity
from flowforge.inference.simulators import TwoMoons
from flowforge.runtime import extras

OUT = Path(__file__).with_name("amortized_fm.json")
MODELS = ("flowforge cnf (flow matching)", "flowforge nsf (likelihood)", "sbi fmpe")


class Posterior:
    """One trained estimator's ``log_prob(theta (n, 2), x (2,))`` and ``sample(xs (m, 2), n)
    -> (n, m, 2)`` (the order `sbc_ranks` calls it in)."""

    def __init__(self, log_prob, sample) -> None:
        self.log_prob, self.sample = log_prob, sample


def train_flowforge(name: str, theta, x, args, seed: int) -> tuple[Posterior, int, int]:
    torch.manual_seed(seed)
    if name.startswith("flowforge cnf"):
        flow = ff.models.cnf(2, hidden=args.hidden, context_dim=2)
        data = ff.datasets.Split(theta, context=x)
        options = dict(epochs=args.epochs, objective="flow-matching", val=None)
    else:
        flow = ff.models.nsf(2, layers=5, hidden=(50, 50), context_dim=2)
        cut = int(0.9 * len(theta))
        data = ff.datasets.Split(theta[:cut], context=x[:cut])
        val = ff.datasets.Split(theta[cut:], context=x[cut:])
        options = dict(epochs=args.max_epochs, val=val, patience=20)
    history = ff.fit(flow, data, batch_size=256, lr=1e-3, progress=False, seed=seed, **options)
    flow.eval()

    def log_prob(points, observation):
        with torch.no_grad():
            return flow.log_prob(points, context=observation.expand(len(points), -1))

    def sample(xs, n):
        return flow.sample(n, context=xs)

    parameters = count_parameters(flow)
    return Posterior(log_prob, sample), len(history.epochs), parameters


def train_sbi(theta, x, args, seed: int) -> tuple[Posterior, int, int]:
    from sbi.inference import FMPE
    from sbi.utils import BoxUniform

    torch.manual_seed(seed)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    fmpe = FMPE(prior, show_progress_bars=False)
    estimator = fmpe.append_simulations(theta, x).train(max_num_epochs=args.max_epochs)
    posterior = fmpe.build_posterior()

    def log_prob(points, observation):
        with torch.no_grad():
            return posterior.log_prob(points, x=observation)

    def sample(xs, n):
        return posterior.sample_batched((n,), x=xs, show_progress_bars=False)

    parameters = count_parameters(estimator)
    return Posterior(log_prob, sample), fmpe._summary["epochs_trained"][-1], parameters


def evaluate(posterior: Posterior, simulator: TwoMoons, observations, args) -> dict:
    from sbi.utils.metrics import c2st

    generator = torch.Generator().manual_seed(123)
    kl, c2sts = [], []
    for i, observation in enumerate(observations):
        exact = simulator.sample_posterior(observation[None], args.draws, generator)[:, 0]
        # theta (n, 1, 2) beside x (1, 2): the evidence's grid integral once, not n times
        log_p = simulator.log_posterior(exact[:, None], observation[None])[:, 0]
        kl.append(float((log_p - posterior.log_prob(exact, observation)).mean()))
        ours = posterior.sample(observation[None], args.draws)[:, 0]
        c2sts.append(float(c2st(ours, exact, seed=i)))
    ranks = sbc_ranks(posterior.sample, simulator, args.sbc, n_posterior_samples=200, seed=7)
    p_values = sbc_uniformity(ranks, 200).p_value
    return {
        "kl": statistics.fmean(kl),
        "c2st": statistics.fmean(c2sts),
        "sbc_min_p": float(p_values.min()),
    }


def run(args: argparse.Namespace) -> list[dict]:
    simulator = TwoMoons()
    _, observations = simulator.sample_joint(5, seed=1000)
    rows = []
    for seed in range(args.seeds):
        theta, x = simulator.sample_joint(args.simulations, seed=seed)
        for name in args.models:
            start = time.perf_counter()
            if name == "sbi fmpe":
                posterior, epochs, parameters = train_sbi(theta, x, args, seed)
            else:
                posterior, epochs, parameters = train_flowforge(name, theta, x, args, seed)
            seconds = time.perf_counter() - start
            row = {"model": name, "seed": seed, "simulations": args.simulations}
            if name.startswith("flowforge cnf"):
                row["hidden"] = list(args.hidden)
            row |= {"train_s": round(seconds, 1), "epochs": epochs, "parameters": parameters}
            row |= evaluate(posterior, simulator, observations, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Means (± standard errors over seeds, where there are several) per model."""

    def cell(values: list[float], digits: int) -> str:
        mean, error = seed_mean(values)
        return f"{mean:.{digits}f}" + ("" if error is None else f" ± {error:.{digits}f}")

    lines = [
        "| model | parameters | simulations | KL(p‖q) nats | c2st | SBC min p | train s | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        group = [r for r in rows if r["model"] == name]
        if group:
            lines.append(
                f"| {name} | {group[0].get('parameters', '-')} | {group[0]['simulations']} "
                f"| {cell([r['kl'] for r in group], 3)} "
                f"| {cell([r['c2st'] for r in group], 3)} "
                f"| {cell([r['sbc_min_p'] for r in group], 2)} "
                f"| {cell([r['train_s'] for r in group], 0)} "
                f"| {cell([float(r['epochs']) for r in group], 0)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.amortized_fm")
    parser.add_argument("--simulations", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1000, help="flow matching's epochs")
    parser.add_argument(
        "--hidden",
        type=lambda text: tuple(int(w) for w in text.split(",")),
        default=(128, 128, 128, 128),
        help="the CNF field's hidden widths, comma-separated",
    )
    parser.add_argument("--max-epochs", type=int, default=1000, help="early stopping's cap")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--sbc", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--merge", action="store_true", help="keep --out's rows of the models not run now"
    )
    parser.add_argument("--table", action="store_true", help="print --out's table only")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())["rows"]))
        return
    if args.quick:
        args.simulations, args.epochs, args.max_epochs, args.draws, args.sbc = 300, 2, 2, 200, 20
    if not extras.installed("sbi"):  # the table above needs nothing; a run needs sbi's c2st
        raise SystemExit("benchmarks.amortized_fm needs sbi: pip install -e '.[sbi]'")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # sbi's advice on defaults
    rows = run(args)
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads\n")
    print(table(rows))
    if not args.quick:
        command = "python -m benchmarks.amortized_fm " + " ".join(argv or [])
        record = {"commands": [command], "torch": torch.__version__}
        record |= {"sbi": __import__("sbi").__version__, "rows": rows}
        if args.merge and args.out.exists():
            earlier = json.loads(args.out.read_text())
            kept = [r for r in earlier["rows"] if r["model"] not in args.models]
            record |= {"commands": earlier["commands"] + [command], "rows": kept + rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
