"""Quality at equal budget: every library's Real NVP, MAF and NSF, each built to the same
architecture and parameter count, trained the same way on the 2-D toys and the 8x8 digits;
then its test NLL.

    OMP_NUM_THREADS=1 python -m benchmarks.quality [--models realnvp maf nsf] \\
        [--data two-moons 8gaussians checkerboard digits] [--epochs N] [--batch-size B] \\
        [--libraries flowforge nflows normflows zuko pyro] [--seeds 0 1 2] [--threads 1]
    python -m benchmarks.quality --report   # the tables of benchmarks/quality.json

The architecture families (``peers.build_model``, at the data's dimension): ``realnvp`` is
case A's (8 affine couplings with MLP conditioners 2x64, half masks), ``maf`` case C's (5
MADE layers 2x256, the order reversed between layers), ``nsf`` case D's (4 rational-quadratic
spline couplings, 8 bins, tail bound 5, MLP 2x128, half masks).

Every library gets the same data, the same shuffled batches, Adam at 1e-3 (fused, no
schedule), the same number of epochs and the same seed (``torch.manual_seed`` before each
model is built; one ``torch.Generator`` seeded alike draws every epoch's order and, for the
digits, the dequantisation noise of each batch, as ``flowforge.training.fit`` does):

- toys: ``flowforge.datasets.load(name, n=20_000, seed=0)``, 16,000 training, 2,000
  validation and 2,000 test points; batches of 256, 100 epochs (6,300 steps). The table
  gives the test NLL in nats, its standard error and the gap to the true entropy H(p).
- ``digits``: scikit-learn's 8x8 digits (``flowforge.datasets.load("digits")``: 1,258 /
  270 / 269 images, pixel values 0..16, flattened to 64-D), dequantised exactly as
  flowforge's density table does it: each training batch afresh, ``x = (k + u) / 17``, the
  test split with the noise of seed 0 (as ``flowforge.training.evaluate``) and the
  validation split with seed 1 (as ``fit``'s validation), the same noise for every library.
  Batches of 128, 200 epochs (2,000 steps). Test NLL in nats on [0, 1]^64 and in bits/dim,
  ``(NLL + 64 log 17) / (64 log 2)``.

The validation NLL is computed after every epoch; the table also gives the epoch of the
best one and the test NLL there (the checkpoint ``ff.fit`` keeps by default; no weights are
restored, so the record holds both that and the test NLL at the end of the budget), and
marks a model that overfits: its validation NLL, averaged over the last tenth of the
epochs, is more than two standard errors above its best such average and above the
training NLL (each epoch's mean batch loss) averaged alike; a single noisy epoch at the
constant learning rate does not count. The per-epoch training and validation NLL are in
the JSON records (``curves``). ``minutes`` is the wall-clock time of the training loop with
the validations and the test (one thread: run with ``OMP_NUM_THREADS=1``; the script also
calls ``torch.set_num_threads(--threads)``). The parameter count of each model is printed
per family and dimension: the peers match flowforge's exactly (``peers.build_model``).
A loss that becomes NaN or infinite stops that model's training; its record says so.

Results are merged into ``benchmarks/quality.json`` (a list of records with ``data``,
``model``, ``library``, ``nll``, ``se``, ``seconds``, ``parameters``, ``gap`` for the toys,
``bits_per_dim`` for the digits, ...): a record replaces the one of the same data, model,
library and seed; records of the first version of this script (Real NVP only) get ``model:
realnvp`` and ``seed: 0``. ``--seeds 0 1 2`` trains every model once per seed; ``--report``
prints the tables of the JSON (mean and standard error over seeds) without training.

Two peers' models have a *density ceiling* (a property of the libraries' parametrisation,
not of this construction; see peers.py's docstring): nflows' Real NVP (its affine coupling's
scale is ``sigmoid(s + 2) + 1e-3 <= 1.001`` in the data-to-noise direction) and normflows'
MAF (the same scale, used by ``flows.Reverse`` in that direction for a one-pass density) can
only contract volume, so ``log q(x) <= log N(0; 0, I) + L D' log 1.001`` for every ``x``
(``L D'`` transformed features in all): a test NLL of at least ``(D/2) log 2 pi`` minus a
hundredth, 1.83 nats in 2-D (two-moons has H(p) = 1.008: nflows' 2.018 is this ceiling, not
a training failure) and 58.5 nats = 5.41 bits/dim on the digits, worse than uniform noise
(log2 17 = 4.09 bits/dim).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from flowforge import datasets

from . import peers
from .harness import Subject

FAMILIES = tuple(peers.FAMILIES)
TOYS = ("two-moons", "8gaussians", "checkerboard")
# data -> (epochs, batch size) unless --epochs / --batch-size say otherwise
BUDGET = {**dict.fromkeys(TOYS, (100, 256)), "digits": (200, 128)}
LR = 1e-3
TEST_SEED, VAL_SEED = 0, 1  # the dequantisation noise of the evaluations (as flowforge's)


def load(name: str) -> datasets.Dataset:
    """The dataset as vectors: a toy of 20,000 points, or the digits flattened to 64-D."""
    if name == "digits":
        return datasets.load("digits", seed=0, flatten=True)
    return datasets.load(name, n=20_000, seed=0)


def fixed(split: datasets.Split, seed: int) -> Tensor:
    """The split in model space, dequantised once with the noise of ``seed`` (discrete data)."""
    return split.dequantize(split.x, torch.Generator().manual_seed(seed))


@torch.no_grad()
def nll_values(subject: Subject, x: Tensor, batch_size: int = 4096) -> Tensor:
    """``-log q(x_i)`` of every point, float64 ``(N,)``, by the library's own density call."""
    return torch.cat([-peers.log_prob(subject, b).double() for b in x.split(batch_size)])


def summary(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of per-point NLL values."""
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def train_and_test(
    subject: Subject, data: datasets.Dataset, epochs: int, batch_size: int, seed: int
) -> dict:
    """Train ``subject`` for ``epochs`` and evaluate it; see the module docstring."""
    optimizer = torch.optim.Adam(subject.module.parameters(), lr=LR, fused=True)
    generator = torch.Generator().manual_seed(seed)
    train = data.train
    test, val = fixed(data.test, TEST_SEED), fixed(data.val, VAL_SEED)
    best: dict = {"val": math.inf}
    curves: dict[str, list[float]] = {"train": [], "val": []}
    val_nll = val_se = math.nan
    train_nll, diverged, done = math.nan, None, 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = 0.0
        for step, index in enumerate(
            torch.randperm(len(train), generator=generator).split(batch_size)
        ):
            x = train.dequantize(train.x[index], generator)
            optimizer.zero_grad(set_to_none=True)
            loss = subject.loss(x)
            if not torch.isfinite(loss):
                diverged = f"loss {loss.item()} at epoch {epoch}, step {step + 1}"
                break
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        if diverged:
            break
        done, train_nll = epoch, total / len(train)
        val_nll, val_se = summary(nll_values(subject, val))
        curves["train"].append(train_nll)
        curves["val"].append(val_nll)
        if val_nll < best["val"]:
            best = {"val": val_nll, "epoch": epoch, "test": summary(nll_values(subject, test))}
    nll, se = summary(nll_values(subject, test))
    seconds = time.perf_counter() - started
    result = {
        "nll": nll,
        "se": se,
        "seconds": seconds,
        "epochs": epochs,
        "epochs_done": done,
        "batch_size": batch_size,
        "train_nll": train_nll,
        "val_nll": val_nll,
        "best_epoch": best.get("epoch"),
        "best_val_nll": best["val"] if "epoch" in best else None,
        "nll_at_best": best["test"][0] if "epoch" in best else None,
        "se_at_best": best["test"][1] if "epoch" in best else None,
        "val_se": val_se,
        "overfits": overfits(curves, val_se),
        "curves": curves,
        "diverged": diverged,
    }
    split = data.test
    if split.discrete:
        per_nat = split.dim * math.log(2)
        result["bits_per_dim"] = split.bits_per_dim(nll) if math.isfinite(nll) else None
        result["bpd_se"] = se / per_nat
        if result["nll_at_best"] is not None:
            result["bits_per_dim_at_best"] = split.bits_per_dim(result["nll_at_best"])
    if data.entropy is not None:
        result["gap"] = nll - data.entropy
        if result["nll_at_best"] is not None:
            result["gap_at_best"] = result["nll_at_best"] - data.entropy
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
    }


def overfits(curves: dict[str, list[float]], se: float) -> bool | None:
    """Whether the validation NLL, averaged over windows of a tenth of the epochs (so that
    one noisy epoch at a constant learning rate does not count), ends more than two standard
    errors above its best window and above the training NLL of the last window."""
    val, train = curves["val"], curves["train"]
    w = max(1, len(val) // 10)
    if not val or not math.isfinite(se):
        return None
    smooth = [sum(val[i - w : i]) / w for i in range(w, len(val) + 1)]
    end, last_train = smooth[-1], sum(train[-w:]) / w
    return bool(end - min(smooth) > 2 * se and end - last_train > 2 * se)


def merge(path: Path, results: list[dict]) -> list[dict]:
    """``path``'s records (old ones given ``model: realnvp`` and ``seed: 0``) with ``results``
    replacing those of the same data, model, library and seed."""
    old = json.loads(path.read_text()) if path.exists() else []
    for record in old:
        record.setdefault("model", "realnvp")
        record.setdefault("seed", 0)
        if "curves" not in record:  # made before the curves were kept: not assessed
            record.pop("overfits", None)

    def key(r: dict) -> tuple:
        return r["data"], r["model"], r["library"], r["seed"]

    new = {key(r) for r in results}
    return [r for r in old if key(r) not in new] + results


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


HEADER = (
    "| data | model | library | parameters | test NLL (nats) | s.e. | NLL - H(p) | bits/dim "
    "| best val epoch | test NLL there | overfits | minutes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: dict) -> str:
    epoch = "" if r["best_epoch"] is None else f"{r['best_epoch']}/{r['epochs']}"
    flags = {True: "yes", False: "no", None: ""}[r.get("overfits")] + (
        f"; diverged: {r['diverged']}" if r["diverged"] else ""
    )
    return (
        f"| {r['data']} | {r['model']} | {r['library']} | {r['parameters']:,} | "
        f"{number(r['nll'])} | {number(r['se'])} | {number(r.get('gap'))} | "
        f"{number(r.get('bits_per_dim'))} | {epoch} | {number(r['nll_at_best'])} | {flags} | "
        f"{r['seconds'] / 60:.1f} |"
    )


def test_nll(r: dict, at_best: bool) -> float | None:
    """A record's test NLL at the end of the budget or, ``at_best``, at the best validation
    epoch: in bits/dim for discrete data, else in nats; None if there is none."""
    if "bits_per_dim" in r:
        return r.get("bits_per_dim_at_best") if at_best else r["bits_per_dim"]
    return r["nll_at_best"] if at_best else r["nll"]


def seed_mean(values: list[float]) -> tuple[float, float | None]:
    """The mean over seeds and its standard error (None for a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def report(records: list[dict], at_best: bool) -> str:
    """A markdown table, data and model by library: the test NLL (nats; bits/dim for the
    digits) at the end of the budget or, ``at_best``, at the best validation epoch. With
    several seeds, the mean and the standard error over seeds; with one, the test-set
    standard error. The best mean of a row is bold. Rows: the toys by family, then the
    digits by family."""
    libraries = list(dict.fromkeys(r["library"] for r in records))
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in records:
        groups.setdefault((r["data"], r["model"]), {}).setdefault(r["library"], []).append(r)
    lines = [
        "| data | model | seeds | " + " | ".join(libraries) + " |",
        "|---|---|---|" + "---|" * len(libraries),
    ]
    data_order, model_order = list(BUDGET), list(FAMILIES)

    def position(group: tuple[str, str]) -> tuple:
        """The toys by family, then the digits by family; unknown names last, as met."""
        data, model = group
        return (
            data == "digits",
            model_order.index(model) if model in model_order else len(model_order),
            data_order.index(data) if data in data_order else len(data_order),
        )

    for (data, model), by_library in sorted(groups.items(), key=lambda g: position(g[0])):
        cells: dict[str, tuple[float, float]] = {}
        for library, runs in by_library.items():
            values, errors = [], []
            for r in runs:
                nll = test_nll(r, at_best)
                if nll is None:
                    continue
                se = r["se_at_best"] if at_best else r["se"]
                if "bits_per_dim" in r:  # discrete data: bits/dim of the quantised levels
                    se *= r["bpd_se"] / r["se"]  # 1 / (D log 2)
                values.append(nll)
                errors.append(se)
            if values:
                mean, spread = seed_mean(values)
                cells[library] = (mean, errors[0] if spread is None else spread)
        if not cells:
            continue
        best = min(mean for mean, _ in cells.values())
        seeds = max(len(runs) for runs in by_library.values())
        row_cells = []
        for library in libraries:
            if library not in cells:
                row_cells.append("")
                continue
            mean, spread = cells[library]
            text = f"{mean:.3f} ± {spread:.3f}"
            row_cells.append(f"**{text}**" if mean == best else text)
        unit = " (bits/dim)" if any("bits_per_dim" in r for r in runs) else ""
        lines.append(f"| {data}{unit} | {model} | {seeds} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--data", nargs="+", default=[*TOYS, "digits"], choices=list(BUDGET))
    parser.add_argument("--libraries", nargs="+", default=["flowforge", *peers.LIBRARIES])
    parser.add_argument("--epochs", type=int, help="for all data (default: 100 toys, 200 digits)")
    parser.add_argument(
        "--batch-size", type=int, help="for all data (default: 256 toys, 128 digits)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the tables of the results in --out (end of budget, best validation epoch)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality.json"))
    args = parser.parse_args()
    if args.report:
        records = json.loads(args.out.read_text())
        print("Test NLL at the end of the budget:\n\n" + report(records, at_best=False))
        print("\nTest NLL at the best validation epoch:\n\n" + report(records, at_best=True))
        return
    torch.set_num_threads(args.threads)
    libraries = [lib for lib in args.libraries if lib == "flowforge" or peers.available(lib)]
    for name in args.data:
        data = load(name)
        dim = data.train.dim
        epochs, batch_size = BUDGET[name]
        epochs, batch_size = args.epochs or epochs, args.batch_size or batch_size
        for family in args.models:
            counts = {lib: peers.build_model(lib, family, dim).parameters for lib in libraries}
            print(
                f"\n{name} ({dim}-D), {family}: parameters "
                + ", ".join(f"{lib} {n:,}" for lib, n in counts.items())
            )
            print(HEADER, flush=True)
            for seed in args.seeds:
                for library in libraries:
                    torch.manual_seed(seed)
                    subject = peers.build_model(library, family, dim)
                    r = {
                        "data": name,
                        "model": family,
                        "library": library,
                        "seed": seed,
                        "parameters": subject.parameters,
                        **train_and_test(subject, data, epochs, batch_size, seed),
                    }
                    print(row(r), flush=True)
                    args.out.write_text(json.dumps(merge(args.out, [r]), indent=1))


if __name__ == "__main__":
    main()
