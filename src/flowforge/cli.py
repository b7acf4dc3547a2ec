"""The ``flowforge`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from . import __version__, models
from .nn import MLP


def demo(seed: int = 0) -> None:
    """Build each model, evaluate log-densities and draw samples; print what comes out.

    Conditioners start at zero (the identity map); the demo gives their last layers small
    random weights so that every model is a non-trivial, untrained map.
    """
    torch.manual_seed(seed)
    specs = {
        "realnvp": dict(dim=2, layers=8, hidden=(64, 64)),
        "nice": dict(dim=784, layers=4, hidden=(1000,) * 5),
        "planar": dict(dim=2, layers=32),
        "radial": dict(dim=2, layers=32),
    }
    print(
        f"flowforge {__version__}, torch {torch.__version__}, random untrained weights, seed {seed}"
    )
    print(
        f"{'model':8} {'dim':>4} {'params':>10} {'mean log p(x)':>14} "
        f"{'sample mean':>12} {'sample std':>11} {'round trip':>11} {'|log q - log p|':>16} "
        f"{'time':>7}"
    )
    for name, kwargs in specs.items():
        start = time.perf_counter()
        flow = models.MODELS[name](**kwargs)
        for module in flow.modules():
            if isinstance(module, MLP):
                torch.nn.init.normal_(module[-1].weight, std=0.05)
        dim = kwargs["dim"]
        x = torch.randn(256, dim)
        with torch.no_grad():
            log_p = flow.log_prob(x)
            z, _ = flow.transform(x)
            x_back, _ = flow.transform.inverse(z)
            samples, log_q = flow.sample_and_log_prob(1000)
            gap = (log_q - flow.log_prob(samples)).abs().max()
        elapsed = time.perf_counter() - start
        print(
            f"{name:8} {dim:>4} {sum(p.numel() for p in flow.parameters()):>10,} "
            f"{log_p.mean():>14.3f} {samples.mean():>12.3f} {samples.std():>11.3f} "
            f"{(x_back - x).abs().max():>11.1e} {gap:>16.1e} {elapsed:>6.2f}s"
        )
    print("round trip: max |f^-1(f(x)) - x|; last column: sample_and_log_prob vs log_prob.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowforge",
        description="Normalizing flows: fit densities, sample, and approximate posteriors.",
    )
    parser.add_argument("--version", action="version", version=f"flowforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_demo = commands.add_parser(
        "demo", help="build each model, print log-probs and sample statistics"
    )
    run_demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(seed=args.seed)
        return 0
    parser.print_help(sys.stderr if args.command else sys.stdout)
    return 0
