r"""Data-parallel training on ``torch.distributed``: the process group, the shards and the
reductions that make an N-process `fit` equal to the one-process run.

Every rank holds the same model, optimiser, generator and permutation of the training split.
Step $t$ takes the global batch $B_t$ of ``batch_size`` indices from that permutation (the same
on every rank, dequantised from the same generator), and rank $r$ of $N$ evaluates the $r$-th
contiguous part $S_r$ of it. Its loss is scaled so that DistributedDataParallel's average of
the gradients is the gradient of the global batch's mean NLL,

$$
L_r = \frac{N}{|B_t|} \sum_{i \in S_r} -\log q(x_i), \qquad
\frac1N \sum_r \nabla L_r = \nabla \frac{1}{|B_t|} \sum_{i \in B_t} -\log q(x_i),
$$

for any split of $B_t$ into parts (uneven ones, and empty ones, included); the same holds for
any objective's per-sample losses (flow matching's), whose random draws every rank makes for
the whole global batch from the shared generator before taking its part. So the run with
global batch $B$ on N processes follows the one-process run with batch $B$, up to the order of
floating-point sums. Validation: each rank scores every N-th batch of the validation split and
the sums of the NLL and of its square are all-reduced.

A process group is found in the environment that ``torchrun`` (or ``flowforge fit --nproc``)
sets, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, or one
that is already initialised; the backend is gloo on the CPU and nccl on CUDA.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

TIMEOUT_S = 120.0  # a collective that waits this long for a dead rank fails instead of hanging


@dataclass(frozen=True)
class Workers:
    """This process's place in the group: ``rank`` of ``world_size``, ``local_rank`` on its
    machine."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and the progress bar."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one; a rank
        gets nothing when ``n < world_size``)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_sum(self, *values: float) -> list[float]:
        """The sums over the ranks of these numbers (float64, one collective)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()


def _collective_device() -> torch.device:
    """Where the group's collectives run: the rank's GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def restart_count() -> int:
    """How many times torchrun's agent has restarted this group (``--max-restarts``): 0 on
    the first attempt and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def _attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """For a group that torchrun restarted, the agent's key-value store under a prefix of
    this attempt; None on a first attempt.

    The agent's store outlives its workers. Its static rendezvous (``--master-port`` without
    ``--rdzv-backend c10d``) gives every attempt the same store and the same keys, so a
    restarted group found the dead attempt's addresses under them and its gloo ranks could not
    connect (they waited on peers that no longer existed). A prefix per attempt gives each
    attempt keys of its own; torch's c10d rendezvous (``--standalone``) works either way."""
    attempt = restart_count()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"flowforge/attempt-{attempt}/", agent)


def backend_for(device: torch.device) -> str:
    """nccl for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device) -> torch.device:
    """A CUDA device pinned to this rank's GPU (``cuda:LOCAL_RANK``); others unchanged."""
    if device.type == "cuda" and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    return device


def setup(distributed: bool | None, device: torch.device) -> Workers | None:
    """The `Workers` of this process, initialising the process group from the environment
    if needed; None for a single-process run.

    ``distributed``: None (auto: a group that is initialised, or ``WORLD_SIZE`` > 1), True
    (required: a one-line error when there is no group to join) or False (never).
    """
    if distributed is False:
        return None
    if not dist.is_available():
        if distributed:
            raise RuntimeError("distributed=True needs torch.distributed, which this torch lacks")
        return None
    if not dist.is_initialized():
        if environment_world_size() <= 1 and not distributed:
            return None
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
        ]
        if missing:
            raise RuntimeError(
                f"distributed=True but {', '.join(missing)} not set: start the workers with "
                "torchrun (or flowforge fit --nproc N), or initialise a process group first"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device_for(device))  # this rank's own GPU
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend_for(device), timeout=timeout)
        else:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(
                backend_for(device), store=store, rank=rank, world_size=world, timeout=timeout
            )
    world = dist.get_world_size()
    if world == 1 and not distributed:
        return None
    return Workers(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def wrap(flow: torch.nn.Module) -> torch.nn.Module:
    """``flow`` (the objective's loss module around the flow) in DistributedDataParallel.
    Parameters and buffers are broadcast from rank 0 once, here; not at every step, since
    every rank computes its buffers (ActNorm's) from the same data."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(flow.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(flow, device_ids=ids, forward_sync_buffers=False)


def pending(flow: torch.nn.Module) -> bool:
    """Whether a data-dependent initialisation is still to run: a layer with an
    ``initialized`` flag that is false (`ActNorm`, `DiagonalScaling` with a target)."""
    return any(
        isinstance(getattr(m, "initialized", None), Tensor) and not bool(m.initialized)
        for m in flow.modules()
    )


def initialize(flow: torch.nn.Module, x: Tensor, context: Tensor | None) -> None:
    """Run the pending data-dependent initialisations on the whole global batch ``x``, as
    the one-process run does on its first batch, so that every rank starts from the same
    parameters."""
    if pending(flow):
        with torch.no_grad():
            flow.log_prob(x, context)


def gather(part: Tensor | None) -> Tensor | None:
    """The ranks' parts concatenated in rank order (every rank gets the whole); the
    parts may differ in length."""
    if part is None:
        return None
    parts: list[Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part.cpu())
    return torch.cat(parts).to(part.device)


def launched_rank() -> int:
    """This process's rank: the group's if one is initialised, else torchrun's ``RANK``
    (0 outside a launcher), so that code before `setup` knows whether it is rank 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def threads_per_worker(workers: int) -> int:
    """CPU threads for each of ``workers`` local processes, so that together they use the
    machine's cores without oversubscribing them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def launch_local(nproc: int, argv: list[str], max_restarts: int = 0) -> None:
    """Run ``python -m flowforge *argv`` in ``nproc`` local workers through torch's elastic
    launcher (what ``torchrun --standalone --nproc-per-node nproc`` does), each with
    `threads_per_worker` threads; a failed worker ends them all, and a one-line
    ``ChildProcessError`` names it."""
    import socket
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker(nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"flowforge-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        max_restarts=max_restarts,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "flowforge", *argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        raise ChildProcessError(
            f"worker {rank} of {nproc} failed (exit code {failure.exitcode}); the others were "
            "stopped; the run's last checkpoint continues with --resume"
        ) from None
