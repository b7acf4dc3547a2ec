"""What an IAF guide costs per SVI step in Pyro: `Flow.as_pyro` against a plain wrapper and
against the same ELBO written by hand with the one-pass `Flow.rsample_and_log_prob`.

    python -m benchmarks.pyro_guide [--dim 16] [--particles 16] [--rounds 30] [--threads 2]

The model is a conjugate linear-Gaussian one, z ~ N(0, I_d), y | z ~ N(B z, 0.1^2 I_d); the
guide an IAF (`ff.models.iaf`, 5 layers of 64 x 64). Three ways to take one SVI step
(loss, backward, Adam), all timed in the same interleaved rounds after warm-up:

- ``as_pyro``: ``pyro.sample("z", flow.as_pyro())`` under ``Trace_ELBO`` with vectorised
  particles; Pyro scores the guide's draw with the log-density cached from the same pass.
- ``as_pyro, torch Adam``: the same guide and ELBO, its loss from
  ``Trace_ELBO.differentiable_loss`` and the step by one ``torch.optim.Adam`` over the flow's
  parameters (Pyro's documented route to torch optimisers), instead of ``SVI`` with
  ``pyro.optim.Adam``, which keeps one optimiser per parameter tensor.
- ``wrapper``: the same guide through a minimal ``TorchDistributionMixin`` wrapper whose
  ``log_prob`` is ``Flow.log_prob`` (what a user writes without `as_pyro`): Pyro then scores
  each draw in the IAF's slow, sequential direction.
- ``by hand``: no Pyro; ``x, log_q = flow.rsample_and_log_prob(particles)`` and the ELBO
  ``log p(x, y) - log q(x)`` by torch.distributions: the one-pass floor.
- ``Pyro, Normal guide``: the same SVI step with a diagonal Normal guide: what Pyro's
  effect handlers, traces and per-parameter optimisers cost by themselves.

Prints a table of median milliseconds and ratios to ``by hand``, and writes
``benchmarks/pyro_guide.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import flowforge as ff

from .harness import interleaved

try:
    import pyro
    import pyro.distributions as dist
    from pyro.distributions.torch_distribution import TorchDistributionMixin
    from pyro.infer import SVI, Trace_ELBO
except ImportError as error:  # pragma: no cover - the message is the point
    raise SystemExit("benchmarks.pyro_guide needs Pyro: pip install -e '.[pyro]'") from error


class PlainWrapper(torch.distributions.Distribution, TorchDistributionMixin):
    """A flow as Pyro sees it without `as_pyro`: draws by ``rsample``, scores by ``log_prob``."""

    arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution protocol)
    has_rsample = True

    def __init__(self, flow: ff.Flow, batch_shape: tuple[int, ...] = ()) -> None:
        self.flow = flow
        super().__init__(batch_shape, flow.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return PlainWrapper(self.flow, torch.Size(int(size) for size in batch_shape))

    def rsample(self, sample_shape=()):
        return self.flow.rsample((*sample_shape, *self.batch_shape))

    def log_prob(self, x):
        return self.flow.log_prob(x)


def problem(dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
    observed = mixing @ torch.randn(dim, generator=generator)
    return mixing, observed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pyro_guide")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("pyro_guide.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mixing, observed = problem(args.dim)
    prior = dist.Normal(torch.zeros(args.dim), 1.0).to_event(1)

    def model(y):
        z = pyro.sample("z", prior)
        pyro.sample("y", dist.Normal(z @ mixing.T, 0.1).to_event(1), obs=y)

    names = ("as_pyro", "as_pyro, torch Adam", "wrapper", "by hand")
    flows = {name: ff.models.iaf(dim=args.dim) for name in names}
    for flow in flows.values():
        flow.load_state_dict(flows["as_pyro"].state_dict())

    def pyro_step(name, distribution):
        flow = flows[name]

        def guide(y):
            pyro.module(name, flow)
            pyro.sample("z", distribution(flow))

        elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        return lambda: svi.step(observed)

    by_hand = flows["by hand"]
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=1e-3)

    def hand_step():
        optimizer.zero_grad()
        z, log_q = by_hand.rsample_and_log_prob(args.particles)
        likelihood = torch.distributions.Normal(z @ mixing.T, 0.1).log_prob(observed).sum(-1)
        loss = (log_q - prior.log_prob(z) - likelihood).mean()
        loss.backward()
        optimizer.step()

    torch_adam = flows["as_pyro, torch Adam"]
    torch_optimizer = torch.optim.Adam(torch_adam.parameters(), lr=1e-3)
    elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True)

    def torch_adam_step():
        torch_optimizer.zero_grad()
        loss = elbo.differentiable_loss(
            model, lambda y: pyro.sample("z", torch_adam.as_pyro()), observed
        )
        loss.backward()
        torch_optimizer.step()

    def normal_guide(y):
        loc = pyro.param("loc", torch.zeros(args.dim))
        scale = pyro.param("scale", torch.ones(args.dim), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True)
    normal_svi = SVI(model, normal_guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    calls = {
        "as_pyro": pyro_step("as_pyro", lambda flow: flow.as_pyro()),
        "as_pyro, torch Adam": torch_adam_step,
        "wrapper": pyro_step("wrapper", PlainWrapper),
        "by hand": hand_step,
        "Pyro, Normal guide": lambda: normal_svi.step(observed),
    }
    timings = interleaved(calls, rounds=args.rounds, warmup=args.warmup)
    floor = timings["by hand"].median
    print(
        f"IAF guide, dim {args.dim}, {args.particles} vectorised particles, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| SVI step | median ms | IQR | / by hand |")
    print("|---|---:|---:|---:|")
    rows = []
    for name, timing in timings.items():
        ratio = timing.median / floor
        print(f"| {name} | {1e3 * timing.median:.2f} | {timing.spread:.0%} | {ratio:.2f} |")
        rows.append({"step": name, **timing.as_dict(), "over_by_hand": ratio})
    record = {
        "command": " ".join(
            ["python -m benchmarks.pyro_guide", *(sys.argv[1:] if argv is None else argv)]
        ),
        "dim": args.dim,
        "particles": args.particles,
        "threads": args.threads,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
