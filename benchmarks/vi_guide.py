"""A Real NVP as a Pyro SVI guide, as a new user would fit it: how close flowforge's and zuko's
get to a known posterior, and which design choice makes the difference.

    OMP_NUM_THREADS=1 python -m benchmarks.vi_guide [--seeds 0 1 2] [--steps 2000] \\
        [--variants flowforge zuko ...] [--threads 1]
    python -m benchmarks.vi_guide --table

The model is conjugate and 2-D: $z \\sim N(0, I)$, $y \\mid z \\sim N(A z, 0.5^2 I)$ with
``A = [[1, 0.8], [-0.5, 1.2]]`` and ``y = (1, -1)`` observed, so the posterior is a known
Gaussian. The guide is a Real NVP of 4 affine couplings with 2x32 ReLU conditioners on a
standard normal base, ``pyro.sample("z", guide)`` under ``Trace_ELBO(num_particles=16,
vectorize_particles=True)``, ``pyro.optim.Adam({"lr": 3e-3})``, 2,000 SVI steps:
flowforge's ``models.realnvp(2, layers=4, hidden=(32, 32))`` through ``Flow.as_pyro`` and
zuko's ``flows.RealNVP(2, transforms=4, hidden_features=(32, 32))`` through a plain
``TorchDistributionMixin`` wrapper (zuko has no Pyro adapter). The score is
``KL(q || posterior)`` in nats by Monte Carlo over 20,000 draws of q (its standard error is
printed; about 1e-3 here).

The two differ in two design choices, and each variant swaps one:

- initialisation: flowforge zero-initialises each conditioner's last layer (every coupling
  starts as the identity, so q starts as the base); zuko keeps PyTorch's default (random)
  initialisation. ``flowforge, random last layer`` re-initialises flowforge's last layers as
  PyTorch does; ``zuko, zero last layer`` zeroes zuko's.
- the scale: flowforge bounds each layer's log-scale by ``3 tanh(s / 3)``; zuko soft-clips
  it. ``flowforge, scale bound 100`` makes flowforge's bound irrelevant.

The activation (ReLU) and the masks (halves, alternating) are the same in both.
Writes ``benchmarks/vi_guide.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import flowforge as ff

try:  # the table needs neither (the docs build renders it)
    import pyro
    import pyro.distributions as dist
    import zuko
    from pyro.distributions.torch_distribution import TorchDistributionMixin
    from pyro.infer import SVI, Trace_ELBO
except ImportError:  # pragma: no cover - main() says what is missing
    pyro = None

OUT = Path(__file__).with_name("vi_guide.json")
A = torch.tensor([[1.0, 0.8], [-0.5, 1.2]])
NOISE = 0.5
Y = torch.tensor([1.0, -1.0])
VARIANTS = (
    "flowforge",
    "flowforge, random last layer",
    "flowforge, scale bound 100",
    "zuko",
    "zuko, zero last layer",
)


def posterior() -> torch.distributions.MultivariateNormal:
    """The exact posterior: precision I + A^T A / s^2, mean Sigma A^T y / s^2."""
    precision = torch.eye(2) + A.T @ A / NOISE**2
    covariance = torch.linalg.inv(precision)
    return torch.distributions.MultivariateNormal(covariance @ A.T @ Y / NOISE**2, covariance)


def log_joint(z: torch.Tensor) -> torch.Tensor:
    """log p(z, y) of each row of ``z`` ``(n, 2)``: the posterior's unnormalised density."""
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return prior + torch.distributions.Normal(z @ A.T, NOISE).log_prob(Y).sum(-1)


def model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(z @ A.T, NOISE).to_event(1), obs=Y)


def last_layers(module: nn.Module, name: str) -> list[nn.Module]:
    """The last linear layer (a module with a matrix ``weight``: zuko's own ``Linear`` too) of
    every conditioner, a submodule called ``name``."""
    found = []
    for child_name, child in module.named_modules():
        if child_name.endswith(name):
            linears = [m for m in child.modules() if getattr(m, "weight", None) is not None]
            found.append(linears[-1])
    return found


def zuko_for_pyro(flow: nn.Module) -> torch.distributions.Distribution:
    """zuko's flow as a Pyro distribution: draws by ``rsample``, scores by ``log_prob``."""

    class ZukoForPyro(torch.distributions.Distribution, TorchDistributionMixin):
        arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution protocol)
        has_rsample = True

        def __init__(self, flow: nn.Module, batch_shape: tuple[int, ...] = ()) -> None:
            self.flow = flow
            super().__init__(torch.Size(batch_shape), torch.Size([2]), validate_args=False)

        def expand(self, batch_shape, _instance=None):  # Pyro's vectorised particles
            return ZukoForPyro(self.flow, tuple(int(size) for size in batch_shape))

        def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
            return self.flow().rsample((*sample_shape, *self.batch_shape))

        def log_prob(self, value: torch.Tensor) -> torch.Tensor:
            return self.flow().log_prob(value)

    return ZukoForPyro(flow)


def build(variant: str) -> tuple[nn.Module, object]:
    """The guide's module and a function that makes its Pyro distribution."""
    if variant.startswith("flowforge"):
        bound = 100.0 if "scale bound" in variant else 3.0
        flow = ff.models.realnvp(2, layers=4, hidden=(32, 32), scale_bound=bound)
        if "random" in variant:
            for layer in last_layers(flow, "conditioner"):
                nn.Linear.reset_parameters(layer)
        return flow, flow.as_pyro
    flow = zuko.flows.RealNVP(2, transforms=4, hidden_features=(32, 32))
    if "zero" in variant:
        for layer in last_layers(flow, "hyper"):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    return flow, lambda: zuko_for_pyro(flow)


def kl_to_posterior(variant: str, flow: nn.Module, draws: int = 20_000) -> tuple[float, float]:
    """KL(q || posterior) by Monte Carlo, and its standard error."""
    with torch.no_grad():
        if variant.startswith("flowforge"):
            z, log_q = flow.sample_and_log_prob(draws)
        else:
            z, log_q = flow().rsample_and_log_prob((draws,))
        values = (log_q - posterior().log_prob(z)).double()
    return values.mean().item(), (values.std() / math.sqrt(draws)).item()


def svi_step(flow: nn.Module, distribution: object):
    """One SVI step of the guide ``distribution()``, whose parameters are ``flow``'s, per
    call (the param store is cleared; the random state is the caller's)."""
    pyro.clear_param_store()

    def guide() -> None:
        pyro.module("flow", flow)
        pyro.sample("z", distribution())

    elbo = Trace_ELBO(16, max_plate_nesting=1, vectorize_particles=True)
    return SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), elbo).step


def run(variant: str, seed: int, steps: int) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    flow, distribution = build(variant)
    step_once = svi_step(flow, distribution)
    curve = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        step_once()
        if step % 250 == 0:
            curve.append((step, kl_to_posterior(variant, flow, 4_000)[0]))
    seconds = time.perf_counter() - started
    kl, se = kl_to_posterior(variant, flow)
    return {
        "variant": variant,
        "seed": seed,
        "kl": kl,
        "se": se,
        "seconds": seconds,
        "curve": curve,
    }


def table(results: dict) -> str:
    lines = [
        "| guide | KL(q ‖ posterior) by seed (nats) | mean | KL after 250 / 500 / 1,000 steps"
        " (mean) | seconds |",
        "|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["variant"] == variant]
        early = [
            statistics.mean(dict(r["curve"]).get(k, math.nan) for r in rows)
            for k in (250, 500, 1000)
        ]
        by_seed = " / ".join(f"{r['kl']:.3f}" for r in rows)
        lines.append(
            f"| {variant} | {by_seed} | "
            f"{statistics.mean(r['kl'] for r in rows):.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in early)} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    if pyro is None:
        raise SystemExit("benchmarks.vi_guide needs Pyro and zuko: pip install -e '.[bench,pyro]'")
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:  # every variant once per seed, in turn
        for variant in args.variants:
            rows.append(run(variant, seed, args.steps))
            print(f"{variant} seed {seed}: KL {rows[-1]['kl']:.4f}", flush=True)
    results = {
        "command": " ".join(
            ["python -m benchmarks.vi_guide", *(sys.argv[1:] if argv is None else argv)]
        ),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "zuko": zuko.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
