"""Data-parallel training on this machine's cores: one process with all the threads against
one process per core (torch.distributed, gloo), for a small and a large model.

    python -m benchmarks.scaling [--steps-small 300] [--steps-large 40] [--threads 2]

For each model, the same training (`ff.fit`, one epoch of ``steps`` steps of the global batch
256, Adam, float32, random data of the model's shape) in three layouts: 1 process x 1 thread,
1 process x ``threads`` threads, and ``threads`` processes x 1 thread (gloo on the CPU, each
step's batch split between them). The time is the training's own, from a barrier after the
process group is up to the end of `fit` on the slowest rank. Prints samples per second and two
efficiencies: against one thread (``speedup / processes``, the usual parallel efficiency) and
against one process using the same cores (above 1: processes beat threads). Models:
``small``, a 2-D Real NVP (8 layers of 64 x 64), whose steps are too short for threads to
help; ``large``, NICE on 784-D (4 couplings of 5 x 1000), dominated by matrix products.
Writes ``benchmarks/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flowforge as ff
from flowforge.datasets.base import Split

BATCH = 256


def model(name: str) -> tuple[ff.Flow, int]:
    torch.manual_seed(0)
    if name == "small":
        return ff.models.realnvp(dim=2), 2
    return ff.models.nice(dim=784), 784


def train(name: str, steps: int) -> float:
    """Seconds of one epoch of ``steps`` steps (this process's part of the group, if any)."""
    flow, dim = model(name)
    data = Split(torch.rand(steps * BATCH, dim, generator=torch.Generator().manual_seed(1)))
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    ff.fit(flow, data, epochs=1, batch_size=BATCH, progress=False, schedule=None)
    seconds = time.perf_counter() - start
    if dist.is_initialized():  # the slowest rank's time
        tensor = torch.tensor([seconds])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        seconds = float(tensor)
    return seconds


def _worker(rank: int, world: int, port: int, name: str, steps: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    seconds = train(name, steps)
    if rank == 0:
        Path(out).write_text(str(seconds))
    dist.destroy_process_group()


def processes(world: int, name: str, steps: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "seconds"
        mp.start_processes(
            _worker, args=(world, port, name, steps, str(out)), nprocs=world, start_method="spawn"
        )
        return float(out.read_text())


def threads(count: int, name: str, steps: int) -> float:
    torch.set_num_threads(count)
    train(name, min(steps, 5))  # warm-up
    return train(name, steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--steps-small", type=int, default=300)
    parser.add_argument("--steps-large", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="cores to use (default 2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("scaling.json"))
    args = parser.parse_args(argv)
    n = args.threads
    rows = []
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, global batch {BATCH}\n")  # fmt: skip
    print(f"| model | layout | samples/s | efficiency vs 1 thread | vs 1 process x {n} threads |")
    print("|---|---|---:|---:|---:|")
    for name, steps in (("small", args.steps_small), ("large", args.steps_large)):
        seconds = {
            "1 process x 1 thread": threads(1, name, steps),
            f"1 process x {n} threads": threads(n, name, steps),
            f"{n} processes x 1 thread": processes(n, name, steps),
        }
        rate = {layout: steps * BATCH / s for layout, s in seconds.items()}
        one, threaded = rate["1 process x 1 thread"], rate[f"1 process x {n} threads"]
        for layout, samples in rate.items():
            workers = 1 if layout.startswith("1 process x 1") else n
            row = {
                "model": name,
                "layout": layout,
                "steps": steps,
                "samples_per_s": samples,
                "efficiency_vs_one_thread": samples / (workers * one),
                "vs_one_process_threaded": samples / threaded,
            }
            rows.append(row)
            print(
                f"| {name} | {layout} | {samples:,.0f} | {row['efficiency_vs_one_thread']:.2f} "
                f"| {row['vs_one_process_threaded']:.2f} |"
            )
    record = {
        "command": " ".join(
            ["python -m benchmarks.scaling", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
