"""Amortized simulation-based inference: fit q(theta | x) to simulations, check it against the
true posterior.

A conditional flow is trained by maximum likelihood on pairs theta ~ p(theta),
x ~ p(x | theta); it then gives the posterior for any new x without retraining. Two simulators
whose posterior is known (flowforge.inference.simulators) let us check it:

- posterior mean and covariance errors against the exact posterior of test observations
  (linear-Gaussian: closed form; two moons: a 1000 x 1000 grid), beside the same errors of
  exact posterior samples (the Monte Carlo noise floor);
- KL(p || q) averaged over test observations, estimated by log p(theta* | x*) - log q(theta* | x*)
  on test pairs;
- simulation-based calibration (Talts et al. 2018): ranks of theta* among posterior draws,
  chi-square test of uniformity.

OMP_NUM_THREADS=1 python examples/amortized_inference.py --out runs/amortized-nsf  # ~10 min

FLOWFORGE_EXAMPLE_SCALE=0.01 shrinks every default size (the test suite runs it so).

Writes, per simulator, RUN/<simulator>/{sbc.png, posteriors.png, loss.png, model.*} and
RUN/results.json, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

import flowforge as ff
from flowforge import plots
from flowforge.datasets import Dataset, Split
from flowforge.inference.calibration import posterior_errors, sbc_ranks, sbc_uniformity
from flowforge.inference.simulators import SIMULATORS, Simulator

SCALE = float(os.environ.get("FLOWFORGE_EXAMPLE_SCALE", "1"))  # 1: the full study


def scaled(n: int) -> int:
    """A default size times ``FLOWFORGE_EXAMPLE_SCALE`` (at least 2)."""
    return max(2, round(n * SCALE))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--simulator", choices=[*SIMULATORS, "both"], default="both", help="(default: both)"
    )
    parser.add_argument(
        "--simulations", type=int, default=scaled(100_000), help="simulated pairs, split 80/10/10"
    )
    parser.add_argument("--epochs", type=int, default=scaled(40))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--model", default="nsf", help="a builder of flowforge.flows.models.MODELS")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--tail-bound", type=float, default=3.0, help="of spline models")
    parser.add_argument(
        "--base",
        default="conditional-normal",
        help="normal, or conditional-normal: a diagonal Gaussian computed from x",
    )
    parser.add_argument("--test-observations", type=int, default=scaled(100))
    parser.add_argument(
        "--posterior-samples", type=int, default=scaled(1000), help="per observation"
    )
    parser.add_argument("--sbc-simulations", type=int, default=scaled(500))
    parser.add_argument("--sbc-samples", type=int, default=99, help="posterior draws per SBC run")
    parser.add_argument("--out", type=Path, default=Path("runs/amortized"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="simulators trained in parallel")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    return parser.parse_args(argv)


def make_dataset(name: str, simulator: Simulator, n: int, seed: int) -> Dataset:
    """``n`` pairs ``Split(x=theta, context=x)``, cut 80/10/10 into train / val / test."""
    theta, x = simulator.sample_joint(n, seed)
    cuts = [0, round(0.8 * n), round(0.9 * n), n]
    parts = [Split(theta[a:b], context=x[a:b]) for a, b in itertools.pairwise(cuts)]
    return Dataset(name, *parts)


def build_flow(args: argparse.Namespace, simulator: Simulator) -> ff.Flow:
    """``MODELS[args.model](dim=theta_dim, context_dim=x_dim, layers=..., hidden=..., ...)``,
    passing only the arguments that the builder takes."""
    builder = ff.models.MODELS[args.model]
    wanted = {
        "layers": args.layers,
        "hidden": tuple(args.hidden),
        "tail_bound": args.tail_bound,
        "base": args.base,
    }
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    return builder(dim=simulator.theta_dim, context_dim=simulator.x_dim, **kwargs)


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and plot one simulator; returns its results."""
    started = time.perf_counter()
    out = args.out / name
    simulator = SIMULATORS[name]()
    data = make_dataset(name, simulator, args.simulations, args.seed)
    torch.manual_seed(args.seed)
    flow = build_flow(args, simulator)
    history = ff.fit(
        flow,
        data.train,
        data.val,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=args.progress,
        seed=args.seed,
    )
    train_seconds = time.perf_counter() - started
    test = ff.evaluate(flow, data.test)

    # the exact posterior of the first test observations
    k = min(args.test_observations, len(data.test))
    theta_star, x_obs = data.test.x[:k], data.test.context[:k]
    true_mean, true_cov = simulator.posterior_moments(x_obs.double())
    generator = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        flow_draws = flow.sample(args.posterior_samples, context=x_obs)  # (n, k, theta_dim)
    exact_draws = simulator.sample_posterior(x_obs.double(), args.posterior_samples, generator)
    flow_errors = posterior_errors(flow_draws, true_mean, true_cov)
    exact_errors = posterior_errors(exact_draws, true_mean, true_cov)
    with torch.no_grad():
        log_q = flow.log_prob(theta_star, context=x_obs).double()
    gap = simulator.log_posterior(theta_star.double(), x_obs.double()) - log_q
    outside = torch.isinf(simulator.log_prior(flow_draws.double())).double().mean().item()

    # simulation-based calibration, on fresh simulations
    def flow_posterior(x: torch.Tensor, n: int) -> torch.Tensor:
        return flow.sample(n, context=x.to(flow.dtype))

    sbc = {}
    for label, sampler in (("flow", flow_posterior), ("exact", simulator.sample_posterior)):
        ranks = sbc_ranks(sampler, simulator, args.sbc_simulations, args.sbc_samples, args.seed + 1)
        test_u = sbc_uniformity(ranks, args.sbc_samples, bins=20)
        sbc[label] = {"chi2": test_u.statistic.tolist(), "p_value": test_u.p_value.tolist()}
        if label == "flow":
            plots.plot_sbc(
                ranks,
                args.sbc_samples,
                out / "sbc.png",
                names=simulator.names,
                title=f"{name}: SBC of the flow ({args.sbc_simulations} simulations)",
            )

    shown = slice(0, 4)
    reference: dict[str, Any] = {}
    if name == "two-moons":
        reference["grid"] = simulator.posterior_grid(x_obs[shown].double())
    else:
        reference["gaussian"] = simulator.posterior(x_obs[shown].double())
    plots.plot_posteriors(
        flow_draws[shown],
        out / "posteriors.png",
        truths=theta_star[shown],
        titles=[f"x = ({a:.2f}, {b:.2f})" for a, b in x_obs[shown].tolist()],
        names=simulator.names,
        title=f"{name}: flow posterior samples and the true posterior",
        **reference,
    )
    plots.plot_losses(history.epochs, out / "loss.png", title=f"{name}: -log q(theta | x)")
    ff.save(flow, out)

    return {
        "simulator": name,
        "model": flow.config,
        "simulations": args.simulations,
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "train_seconds": round(train_seconds, 1),
        "test_nll": test.nll,
        "test_nll_se": test.nll_se,
        "test_observations": k,
        "posterior_samples": args.posterior_samples,
        "kl": gap.mean().item(),
        "kl_se": (gap.std() / math.sqrt(k)).item(),
        "errors": {"flow": flow_errors.as_dict(), "exact": exact_errors.as_dict()},
        "flow_samples_outside_prior": outside,
        "sbc": {"simulations": args.sbc_simulations, "samples": args.sbc_samples, **sbc},
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table: one row for the flow, one for exact samples."""
    lines = [
        "| simulator | posterior | KL(p‖q) nats | mean error | mean error / sd | cov error "
        "| SBC p-values | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for label in ("flow", "exact"):
            e = r["errors"][label]
            p = ", ".join(f"{v:.3g}" for v in r["sbc"][label]["p_value"])
            kl = f"{r['kl']:.4f} ± {r['kl_se']:.4f}" if label == "flow" else "0"
            seconds = f"{r['seconds']:.0f}" if label == "flow" else ""
            name = r["simulator"] if label == "flow" else ""
            posterior = r["model"]["model"] if label == "flow" else "exact samples"
            lines.append(
                f"| {name} | {posterior} | {kl} | {e['mean']:.4f} | {e['mean_std']:.3f} "
                f"| {e['cov']:.3f} | {p} | {seconds} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = time.perf_counter()
    names = list(SIMULATORS) if args.simulator == "both" else [args.simulator]
    if args.jobs > 1 and len(names) > 1:
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(names))) as pool:
            results = list(pool.map(run, names, [args] * len(names)))
    else:
        results = [run(name, args) for name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": vars(args) | {"out": str(args.out)},
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(results))
    for r in results:
        if r["flow_samples_outside_prior"] > 0:
            print(
                f"{r['simulator']}: {100 * r['flow_samples_outside_prior']:.2f}% of the flow's "
                "posterior samples fall outside the prior's support (the flow is unbounded)"
            )
    print(f"wall time {summary['wall_seconds']:.0f} s; figures and results.json in {args.out}")
    return results


if __name__ == "__main__":
    main()
