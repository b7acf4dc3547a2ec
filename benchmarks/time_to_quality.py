"""Time to quality: the wall-clock training time until the validation NLL first reaches a fixed
target, for ``ff.fit`` with its defaults and for each peer trained by the plain Adam loop of
its documentation, on the same model, data and batches, one after another in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.time_to_quality [--rows two-moons-realnvp ...] \\
        [--libraries nflows normflows zuko] [--budget 120] [--seeds 0] [--threads 1]
    python -m benchmarks.time_to_quality --table      # the table of the JSON, no training

Rows (``ROWS``): the model families of ``benchmarks.quality`` (each peer's model built to
flowforge's architecture and parameter count by ``peers.build_model``) on its data, and a
continuous flow trained by flow matching beside torchcfm's loop on the same network:

- ``two-moons-realnvp``: case A's Real NVP on two moons (16,000 training points), target
  validation NLL - H(p) <= 0.08 nats;
- ``checkerboard-nsf``: case D's spline coupling flow on the checkerboard, target 0.15;
- ``digits-nsf``: the same family on the 8x8 digits (64-D, dequantised), target validation
  NLL <= -70 nats (batches of 128, as ``flowforge fit --data digits``);
- ``two-moons-cnf-fm``: ``models.cnf(2, hidden=(64, 64, 64))`` by flow matching
  (``objective="flow-matching"``) beside torchcfm's ``ConditionalFlowMatcher`` loss on the
  same network, target 0.15 nats, scored by the exact log-density on 500 validation points;
- ``mnist-nice``: case B, the NICE paper's MNIST model (4 additive couplings of 5x1000, 784-D,
  logistic base) on MNIST dequantised to [0, 1] (``--mnist-dir``, default
  ``../shared/data/mnist`` beside the repository), target validation NLL <= -1500 nats (a
  log-likelihood of 1,500 nats; the paper ends at 1980.5), a budget of 300 s.

flowforge's contestant is ``ff.fit(flow, train, val, epochs=E, batch_size=B)`` with every
other option at its default (Adam 1e-3, cosine schedule over the planned epochs, ``compile=
"auto"``); ``E`` is what a user of the row would plan (``Row.epochs``). A peer's is ``Adam(lr=
1e-3)`` and ``loss = -log_prob(x).mean()`` over the same shuffled batches (torchcfm: its
documented regression loss), no schedule. Both compute the validation NLL after every epoch
(flowforge through ``fit``, the peers by their own ``log_prob`` on the same dequantised
validation split); the clock counts training only (``fit``'s epoch ``seconds``, which include
any compilation), not the validations. A contestant stops at the target or when its training
time passes ``--budget`` seconds (or ``fit``'s planned epochs end); ``seconds`` is None if it
never got there. ``speedup_over_best_peer`` is the fastest peer's time over flowforge's (a
peer that never reached the target counts as the budget, making the ratio a lower bound,
``>=``). Writes ``benchmarks/time_to_quality.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import flowforge as ff
from flowforge import datasets
from flowforge.training import optimizers

from . import flowforge_models, peers, quality
from .__main__ import cpu_model
from .cnf_toys import Model, first_time

OUT = Path(__file__).with_name("time_to_quality.json")


@dataclass(frozen=True)
class Row:
    """One problem: data, model family, target and the epochs a flowforge user would plan."""

    data: str
    family: str  # a quality family (realnvp, maf, nsf) or "cnf-fm"
    target_gap: float | None = None  # validation NLL - H(p), for the toys
    target_nll: float | None = None  # validation NLL in nats, where H(p) is unknown
    epochs: int = 100  # ff.fit's default
    batch_size: int = 256  # ff.fit's default
    val_points: int | None = None  # a validation subset (the CNF's exact solve is costly)
    case: str | None = None  # a benchmark case whose models every library has (NICE: "B")
    budget: float | None = None  # training seconds, if not --budget


ROWS = {
    "two-moons-realnvp": Row("two-moons", "realnvp", target_gap=0.08),
    "checkerboard-nsf": Row("checkerboard", "nsf", target_gap=0.15),
    "digits-nsf": Row("digits", "nsf", target_nll=-70.0, epochs=300, batch_size=128),
    "two-moons-cnf-fm": Row("two-moons", "cnf-fm", target_gap=0.15, epochs=300, val_points=500),
    "mnist-nice": Row("mnist", "nice", target_nll=-1500.0, case="B", budget=300.0),
    # variational rows: KL(q || posterior) of benchmarks.vi_guide's 2-D problem as the target
    "vi-realnvp": Row("linear-gaussian", "vi", target_nll=0.002, epochs=10_000),
    "pyro-guide-realnvp": Row("linear-gaussian", "pyro", target_nll=0.01, epochs=10_000),
}
VARIATIONAL = ("vi", "pyro")
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PEERS = ("nflows", "normflows", "zuko")


class TargetReachedError(Exception):
    """Raised from ``fit``'s callback: the target is reached or the budget is spent."""


def target_of(row: Row, data: datasets.Dataset | None) -> float:
    """The row's target in nats: a validation NLL, or a KL for the variational rows."""
    if row.target_nll is not None:
        return row.target_nll
    return data.entropy + row.target_gap


def dataset(row: Row, mnist_dir: Path = MNIST) -> datasets.Dataset | None:
    if row.family in VARIATIONAL:
        return None  # the target is a density, not data
    if row.data == "mnist":
        return datasets.load("mnist", data_dir=mnist_dir, flatten=True)
    data = quality.load(row.data)
    if row.val_points is not None:
        val = data.val
        data = dataclasses.replace(data, val=datasets.Split(val.x[: row.val_points], val.levels))
    return data


def run_flowforge(
    row: Row, data: datasets.Dataset, target: float, budget: float, seed: int, **options
):
    """``ff.fit`` with its defaults (but ``options``) until the target (or the budget)."""
    torch.manual_seed(seed)
    if row.family == "cnf-fm":
        flow, objective = ff.models.cnf(2, hidden=(64, 64, 64)), "flow-matching"
    elif row.case is not None:
        flow, objective = flowforge_models.build(row.case).module, "likelihood"
    else:
        flow = peers.build_model("flowforge", row.family, data.train.dim).module
        objective = "likelihood"
    curve: list[tuple[float, float]] = []
    clock = [0.0]

    def watch(record: dict) -> None:
        clock[0] += record["seconds"]
        curve.append((clock[0], record["val_nll"]))
        reached = record["val_nll"] is not None and record["val_nll"] <= target
        if reached or clock[0] > budget:
            raise TargetReachedError

    events: list = []
    threads = torch.get_num_threads()
    torch.set_num_threads(int(options.pop("threads", threads)))  # a variant: threads=N
    try:
        settings = fit_settings(row, len(data.train), options)
        history = ff.fit(
            flow,
            data.train,
            data.val,
            progress=False,
            objective=objective,
            callback=watch,
            seed=seed,
            **settings,
        )
        events = history.events
    except TargetReachedError:
        pass
    finally:
        torch.set_num_threads(threads)
    return curve, events


def fit_settings(row: Row, n_train: int, options: dict) -> dict:
    """``ff.fit``'s keywords for a row and a variant's changes; ``betas`` and ``eps`` make
    an Adam of those (fused, as fit's own), ``warmup=N`` a linear warm-up over N steps from
    1% of the rate, then fit's cosine decay to 0 over the steps left."""
    settings = {"epochs": row.epochs, "batch_size": row.batch_size, **options}
    adam = {key: settings.pop(key) for key in ("betas", "eps") if key in settings}
    warmup = settings.pop("warmup", None)
    lr = settings.pop("lr", 1e-3)
    if adam:
        settings["optimizer"] = lambda parameters: optimizers.adam(parameters, lr, **adam)
    else:
        settings["lr"] = lr
    if warmup:
        total = settings["epochs"] * -(-n_train // settings["batch_size"])
        lr_ = torch.optim.lr_scheduler

        def scheduler(optimizer):
            rise = lr_.LinearLR(optimizer, 0.01, 1.0, total_iters=warmup)
            decay = lr_.CosineAnnealingLR(optimizer, T_max=total - warmup)
            return lr_.SequentialLR(optimizer, [rise, decay], [warmup])

        settings["scheduler"] = scheduler
    return settings


def peer_model(library: str, row: Row, dim: int, seed: int):
    """The peer's trainable module, its loss of a batch and its log-density of points."""
    torch.manual_seed(seed)
    if library == "torchcfm":
        model = Model("torchcfm-icfm", seed)
        generator = torch.Generator().manual_seed(seed)
        return model.flow, lambda x: model.loss(x, generator), model.flow.log_prob
    if row.case is not None:
        subject = peers.build(library, row.case)
    else:
        subject = peers.build_model(library, row.family, dim)
    return subject.module, subject.loss, lambda x: peers.log_prob(subject, x)


def run_peer(library: str, row: Row, data: datasets.Dataset, target: float, budget, seed: int):
    """The plain Adam loop of the peer's documentation until the target (or the budget)."""
    module, loss_of, log_prob = peer_model(library, row, data.train.dim, seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    train, val = data.train, quality.fixed(data.val, quality.VAL_SEED)
    curve: list[tuple[float, float]] = []
    seconds = 0.0
    while seconds <= budget:
        module.train()
        started = time.perf_counter()
        for index in torch.randperm(len(train), generator=generator).split(row.batch_size):
            x = train.dequantize(train.x[index], generator)
            optimizer.zero_grad()
            loss = loss_of(x)
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - started
        module.eval()
        with torch.no_grad():
            val_nll = torch.cat([-log_prob(b).double() for b in val.split(4096)]).mean().item()
        curve.append((seconds, val_nll if math.isfinite(val_nll) else None))
        if math.isfinite(val_nll) and val_nll <= target:
            break
    return curve


def run_variational(library: str, row: Row, target: float, budget: float, seed: int):
    """Time to KL(q || posterior) <= ``target`` on `benchmarks.vi_guide`'s problem, the KL
    scored every 50 steps by 4,000 draws (outside the clock). ``vi``: ``ff.fit_variational``
    with its defaults (1,000 draws a step, Adam 1e-3 on a cosine over ``Row.epochs`` steps)
    against zuko's plain loop (``rsample_and_log_prob`` of 1,000 draws, Adam 1e-3). ``pyro``:
    each library's Real NVP as a Pyro SVI guide (16 vectorised particles, Adam 3e-3)."""
    from . import vi_guide

    torch.manual_seed(seed)
    if row.family == "pyro":
        vi_guide.pyro.set_rng_seed(seed)
    variant = "flowforge" if library == "flowforge" else "zuko"
    flow, distribution = vi_guide.build(variant)
    curve: list[tuple[float, float]] = []
    clock = [0.0]

    def score(seconds: float) -> bool:
        clock[0] += seconds
        kl = vi_guide.kl_to_posterior(variant, flow, 4_000)[0]
        curve.append((clock[0], kl))
        return kl <= target or clock[0] > budget

    def log_p(z: torch.Tensor) -> torch.Tensor:
        return vi_guide.log_joint(z)

    if row.family == "vi" and library == "flowforge":

        def watch(record: dict) -> None:
            if score(record["seconds"]):
                raise TargetReachedError

        with contextlib.suppress(TargetReachedError):
            ff.fit_variational(
                flow,
                log_p,
                steps=row.epochs,
                log_every=50,
                progress=False,
                seed=seed,
                callback=watch,
            )
        return curve
    step = vi_guide.svi_step(flow, distribution) if row.family == "pyro" else None
    if step is None:
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)

        def step() -> None:
            z, log_q = flow().rsample_and_log_prob((1000,))
            optimizer.zero_grad()
            (log_q - log_p(z)).mean().backward()
            optimizer.step()

    for _ in range(row.epochs // 50):
        started = time.perf_counter()
        for _ in range(50):
            step()
        if score(time.perf_counter() - started):
            break
    return curve


def speedup(ours: float | None, theirs: dict[str, float | None], budget: float) -> dict:
    """The best peer's time over flowforge's; a peer that never reached the target counts
    as the budget (the ratio is then a lower bound)."""
    if ours is None:
        return {"speedup_over_best_peer": None, "best_peer": None, "lower_bound": False}
    reached = {k: v for k, v in theirs.items() if v is not None}
    if reached:
        best = min(reached, key=reached.__getitem__)
        return {
            "speedup_over_best_peer": reached[best] / ours,
            "best_peer": best,
            "lower_bound": False,
        }
    return {"speedup_over_best_peer": budget / ours, "best_peer": None, "lower_bound": True}


def table(results: dict) -> str:
    """The Markdown table of the rows."""
    lines = [
        "| row | seed | target (nats) | flowforge (s) | peers (s) | best peer | speed-up over the "
        "best peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        times = r["seconds"]
        peer_cells = ", ".join(
            f"{k} {'-' if v is None else f'{v:.1f}'}"
            for k, v in times.items()
            if not k.startswith("flowforge")
        )
        ours = "not reached" if times["flowforge"] is None else f"{times['flowforge']:.1f}"
        variants = [
            f"{k.removeprefix('flowforge ')}: {'-' if v is None else f'{v:.1f}'}"
            for k, v in times.items()
            if k.startswith("flowforge ")
        ]
        if variants:
            ours += f" ({', '.join(variants)})"
        ratio = r["speedup_over_best_peer"]
        ratio_text = "-" if ratio is None else ("≥ " if r["lower_bound"] else "") + f"{ratio:.2f}x"
        lines.append(
            f"| {r['row']} | {r['seed']} | {r['target']:.3f} | {ours} | {peer_cells} | "
            f"{r['best_peer'] or '-'} | {ratio_text} |"
        )
    return "\n".join(lines)


def summary(results: dict) -> str:
    """Per row over its seeds: the median time of flowforge and of the best peer, and the
    median and range of the speed-up."""
    lines = [
        "| row | target (nats) | seeds | flowforge, median (s) | best peer, median (s) | "
        "speed-up, median (range) |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["row"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["row"] == name]
        ours = [r["seconds"]["flowforge"] for r in rows if r["seconds"]["flowforge"] is not None]
        theirs = [
            min(v for k, v in r["seconds"].items() if not k.startswith("flowforge") and v)
            for r in rows
            if any(v for k, v in r["seconds"].items() if not k.startswith("flowforge"))
        ]
        ratios = [r["speedup_over_best_peer"] for r in rows if r["speedup_over_best_peer"]]
        bound = "≥ " if any(r["lower_bound"] for r in rows) else ""
        cells = [
            f"{statistics.median(ours):.1f}" if ours else "not reached",
            f"{statistics.median(theirs):.1f}" if theirs else "not reached",
            f"{bound}{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            if ratios
            else "-",
        ]
        lines.append(
            f"| {name} | {rows[0]['target']:.3f} | {len(rows)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def variants(results: dict) -> str:
    """Per row, the median time of each of flowforge's contestants over the seeds (``-``:
    not reached in half of them or more)."""
    names = list(
        dict.fromkeys(k for r in results["rows"] for k in r["seconds"] if k.startswith("flowforge"))
    )
    labels = [name.removeprefix("flowforge").strip() or "defaults" for name in names]
    lines = ["| row | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(names)]
    for row in dict.fromkeys(r["row"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["row"] == row]
        cells = []
        for name in names:
            times = [r["seconds"].get(name) for r in rows]
            reached = sorted(t for t in times if t is not None)
            if len(reached) * 2 <= len(times):
                cells.append("-")
            else:
                cells.append(
                    f"{statistics.median(reached + [math.inf] * (len(times) - len(reached))):.1f}"
                )
        lines.append(f"| {row} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _missing(row: Row, mnist_dir: Path) -> str | None:
    """What a row needs that is not here (an extra, the MNIST files), or None."""
    if row.family in VARIATIONAL and not peers.available("zuko"):
        return "needs zuko: pip install -e '.[bench]'"
    if row.family == "pyro" and importlib.util.find_spec("pyro") is None:
        return "needs Pyro: pip install -e '.[pyro]'"
    if row.family == "cnf-fm" and importlib.util.find_spec("torchcfm") is None:
        return "needs torchcfm: pip install -e '.[bench]'"
    if row.data == "mnist" and not Path(mnist_dir).is_dir():
        return f"no MNIST files in {mnist_dir}; give --mnist-dir"
    return None


def _number(text: str) -> int | float | tuple[float, ...]:
    """A variant's value: an integer where it reads as one, a tuple of floats where it has
    commas (``betas=0.9,0.99``), else a float."""
    if "," in text:
        return tuple(float(part) for part in text.split(","))
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--libraries", nargs="+", default=list(PEERS))
    parser.add_argument(
        "--budget", type=float, default=120.0, help="training seconds, at most (NICE: 300)"
    )
    parser.add_argument("--mnist-dir", type=Path, default=MNIST, help="the MNIST IDX files")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--ema",
        type=float,
        help="also run ff.fit with this ema= (the contestant 'flowforge ema=D', not compared)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run ff.fit with this keyword changed, e.g. lr=2e-3 or batch_size=512, "
        "or Adam's betas=0.9,0.99 or eps=1e-6, or warmup=STEPS, or threads=N (the contestant "
        "'flowforge KEY=VALUE', not compared; repeatable)",
    )
    parser.add_argument("--no-peers", action="store_true", help="flowforge's contestants only")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.out.read_text())
        print(summary(results) + "\n\n" + table(results))
        return
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    command = " ".join(
        ["python -m benchmarks.time_to_quality", *(sys.argv[1:] if argv is None else argv)]
    )
    results.update(
        machine=f"{cpu_model()}, {args.threads} thread(s)",
        torch=torch.__version__,
        python=platform.python_version(),
    )
    results["commands"] = [*results.get("commands", []), command]
    for seed in args.seeds:
        for name in args.rows:
            row = ROWS[name]
            missing = _missing(row, args.mnist_dir)
            if missing:
                print(f"{name}: skipped ({missing})")
                continue
            data = dataset(row, args.mnist_dir)
            budget = row.budget or args.budget
            target = target_of(row, data)
            libraries = ["torchcfm"] if row.family == "cnf-fm" else args.libraries
            if row.family in VARIATIONAL:
                libraries = ["zuko"]
            libraries = [lib for lib in libraries if lib == "torchcfm" or peers.available(lib)]
            libraries = [] if args.no_peers else libraries
            changes = ([] if args.ema is None else [f"ema={args.ema:g}"]) + args.variant
            variant = [f"flowforge {change}" for change in changes]
            order = ["flowforge", *variant, *libraries]
            if seed % 2:
                order.reverse()  # alternate who goes first, against drifts of the machine
            curves, events = {}, []
            for library in order:
                if row.family in VARIATIONAL:
                    curves[library] = run_variational(library, row, target, budget, seed)
                elif library == "flowforge":
                    curves[library], events = run_flowforge(row, data, target, budget, seed)
                elif library.startswith("flowforge "):
                    key, value = library.removeprefix("flowforge ").split("=", 1)
                    curves[library], _ = run_flowforge(
                        row, data, target, budget, seed, **{key: _number(value)}
                    )
                else:
                    curves[library] = run_peer(library, row, data, target, budget, seed)
                print(f"{name} seed {seed} {library}: {first_time(curves[library], target)}")
            seconds = {
                k: first_time(curves[k], target) for k in ["flowforge", *variant, *libraries]
            }
            record = {
                "row": name,
                "seed": seed,
                "data": row.data,
                "family": row.family,
                "target": target,
                "budget_s": budget,
                "epochs": row.epochs,
                "batch_size": row.batch_size,
                "seconds": seconds,
                **speedup(
                    seconds["flowforge"],
                    {k: v for k, v in seconds.items() if not k.startswith("flowforge")},
                    budget,
                ),
                "compile_events": events,
                "curves": curves,
            }
            results["rows"] = [
                r for r in results["rows"] if (r["row"], r["seed"]) != (name, seed)
            ] + [record]
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results) + "\n\n" + table(results))


if __name__ == "__main__":
    main()
