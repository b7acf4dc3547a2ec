"""Neural posterior estimation in sbi with flowforge's estimators beside sbi's own zuko ones:
posterior error, calibration and time at the same simulation budget and model size.

    python -m benchmarks.sbi_npe [--seeds 3] [--simulations 5000] [--quick]

For each task, seed and estimator: ``NPE(prior, density_estimator=...)`` trained by sbi's
``train()`` with its defaults (Adam 5e-4, batches of 200, early stopping after 20 epochs
without improvement of the validation loss) on the same simulations; then, at 5 observations
drawn from the joint,

- ``KL``: KL(p || q) = E_p[log p(theta | x) - log q(theta | x)] by 2,000 exact posterior
  draws (nats; 0 for a perfect estimator), averaged over
  the observations;
- ``c2st``: sbi's classifier two-sample test between 2,000 draws of q and of the exact
  posterior (0.5: indistinguishable), averaged over the observations;
- ``SBC``: sbi's ``run_sbc`` / ``check_sbc`` on 200 prior draws with 200 posterior draws
  each: the smallest Kolmogorov-Smirnov p-value of the marginal ranks (small: miscalibrated)
  and the c2st of the ranks against uniform ones (0.5: uniform);
- the training time (seconds, 2 threads) and the number of epochs.

Tasks: ``linear-gaussian`` (flowforge's `LinearGaussian`, theta 5-D, x 10-D, noise 0.5, a
Gaussian prior: the posterior is Gaussian in closed form) and ``two-moons`` (sbi's benchmark
task, flowforge's `TwoMoons`, posterior sampled exactly by rejection and its density from the
grid). Estimators, 5 layers with two hidden layers of 50 each: flowforge's ``maf``,
``maf_rqs`` (autoregressive splines) and ``nsf`` (coupling splines, flowforge's default)
through `flowforge.interop.sbi.posterior_nn`, and sbi's ``zuko_maf`` and ``zuko_nsf`` with
``hidden_features=[50, 50]``, so that ``maf``/``zuko_maf`` and ``maf_rqs``/``zuko_nsf`` have
the same parameter counts. The estimators of one seed train in turn on the same simulations,
interleaved, so that a slow moment of the machine hits them alike. Prints a table of means
and standard errors over seeds, and writes ``benchmarks/sbi_npe.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from flowforge.inference.simulators import LinearGaussian, TwoMoons

try:
    from sbi.diagnostics import check_sbc, run_sbc
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn as sbi_posterior_nn
    from sbi.utils import BoxUniform
    from sbi.utils.metrics import c2st

    from flowforge.interop.sbi import posterior_nn
except ImportError as error:  # pragma: no cover - the message is the point
    raise SystemExit("benchmarks.sbi_npe needs sbi: pip install -e '.[sbi]'") from error

ESTIMATORS = {
    "flowforge maf": lambda: posterior_nn("maf", hidden_features=50, num_transforms=5),
    "sbi zuko_maf": lambda: sbi_posterior_nn("zuko_maf", hidden_features=[50, 50]),
    "flowforge maf_rqs": lambda: posterior_nn("maf_rqs", hidden_features=50, num_transforms=5),
    "sbi zuko_nsf": lambda: sbi_posterior_nn("zuko_nsf", hidden_features=[50, 50]),
    "flowforge nsf": lambda: posterior_nn("nsf", hidden_features=50, num_transforms=5),
}


def task(name: str):
    """The simulator and the prior as sbi wants it (a torch distribution)."""
    if name == "linear-gaussian":
        simulator = LinearGaussian(theta_dim=5, x_dim=10, noise=0.5, seed=0)
        prior = torch.distributions.MultivariateNormal(torch.zeros(5), torch.eye(5))
    else:
        simulator = TwoMoons()
        prior = BoxUniform(-torch.ones(2), torch.ones(2))
    return simulator, prior


def evaluate(npe: NPE, simulator, prior, observations: torch.Tensor, draws: int, sbc: int):
    posterior = npe.build_posterior()
    kl, c2sts = [], []
    generator = torch.Generator().manual_seed(123)
    for i, x in enumerate(observations):
        exact = simulator.sample_posterior(x.reshape(1, -1), draws, generator)[:, 0]
        log_p = simulator.log_posterior(exact, x.expand(draws, -1))
        log_q = posterior.log_prob(exact, x=x)
        kl.append(float((log_p - log_q).mean()))
        ours = posterior.sample((draws,), x=x, show_progress_bars=False)
        c2sts.append(float(c2st(ours, exact, seed=i)))
    theta, x = simulator.sample_joint(sbc, seed=99)
    ranks, dap = run_sbc(theta, x, posterior, num_posterior_samples=200, show_progress_bar=False)
    checks = check_sbc(ranks, prior.sample((sbc,)), dap, num_posterior_samples=200)
    return {
        "kl": statistics.fmean(kl),
        "c2st": statistics.fmean(c2sts),
        "sbc_ks_min_p": float(checks["ks_pvals"].min()),
        "sbc_c2st_ranks": float(checks["c2st_ranks"].mean()),
    }


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for task_name in args.tasks:
        simulator, prior = task(task_name)
        _, observations = simulator.sample_joint(5, seed=1000)
        for seed in range(args.seeds):
            theta, x = simulator.sample_joint(args.simulations, seed=seed)
            for name, builder in ESTIMATORS.items():
                torch.manual_seed(seed)
                npe = NPE(prior, density_estimator=builder(), show_progress_bars=False)
                start = time.perf_counter()
                estimator = npe.append_simulations(theta, x).train()
                seconds = time.perf_counter() - start
                row = {
                    "task": task_name,
                    "estimator": name,
                    "seed": seed,
                    "simulations": args.simulations,
                    "parameters": sum(p.numel() for p in estimator.parameters()),
                    "train_s": seconds,
                    "epochs": npe._summary["epochs_trained"][-1],
                    **evaluate(npe, simulator, prior, observations, args.draws, args.sbc),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def cell(values: list[float], digits: int) -> str:
        mean = statistics.fmean(values)
        if len(values) < 2:
            return f"{mean:.{digits}f}"
        error = statistics.stdev(values) / math.sqrt(len(values))
        return f"{mean:.{digits}f} ± {error:.{digits}f}"

    lines = [
        "| task | estimator | parameters | KL(p‖q) nats | c2st | SBC min KS p | SBC c2st ranks "
        "| train s | epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["task"], r["estimator"]) for r in rows}, key=lambda k: k[0])
    order = list(ESTIMATORS)
    for task_name, estimator in sorted(keys, key=lambda k: (k[0], order.index(k[1]))):
        group = [r for r in rows if r["task"] == task_name and r["estimator"] == estimator]
        lines.append(
            f"| {task_name} | {estimator} | {group[0]['parameters']} "
            f"| {cell([r['kl'] for r in group], 3)} | {cell([r['c2st'] for r in group], 3)} "
            f"| {cell([r['sbc_ks_min_p'] for r in group], 2)} "
            f"| {cell([r['sbc_c2st_ranks'] for r in group], 3)} "
            f"| {cell([r['train_s'] for r in group], 0)} "
            f"| {cell([float(r['epochs']) for r in group], 0)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sbi_npe")
    parser.add_argument("--tasks", nargs="+", default=["linear-gaussian", "two-moons"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--simulations", type=int, default=5000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--sbc", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1,000 simulations")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the other tasks already in --out (runs of one task at a time)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sbi_npe.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.simulations, args.draws, args.sbc = 1, 1000, 500, 50
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # sbi's advice on defaults, once per estimator
    rows = run(args)
    command = " ".join(["python -m benchmarks.sbi_npe", *(sys.argv[1:] if argv is None else argv)])
    commands = [command]
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())
        rows = [r for r in earlier["rows"] if r["task"] not in args.tasks] + rows
        commands = [c for c in earlier["commands"] if not any(t in c for t in args.tasks)]
        commands.append(command)
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads\n")
    print(table(rows))
    record = {
        "commands": commands,
        "torch": torch.__version__,
        "sbi": __import__("sbi").__version__,
        "rows": rows,
    }
    if not args.quick:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
