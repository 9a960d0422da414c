"""Where a training process runs: its rank among data-parallel processes, its device, its precision, and
where its checkpoints go.

The engine is **torch.distributed** (DistributedDataParallel over NCCL on GPUs, gloo on CPUs) with the
processes launched by **torchrun** (``torch.distributed.run``), by ``srun`` under SLURM, or, on one machine,
by ``stbench run --devices N`` itself, which starts N processes with exactly the environment torchrun gives
them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
Chosen over Lightning Fabric because it ships with torch (no new dependency to keep in step with the pinned
torch, nothing to install on a cluster's nodes) and because the shared trainer already does what Fabric
would add (devices, autocast, checkpoints, the loop): what data parallelism needs on top is the exact
split of each global batch into contiguous per-rank shares (Fabric's DistributedSampler interleaves
items and reshuffles on its own), statistics and embeddings over the global batch, and gradient scaling,
all of which are a few torch.distributed calls (:mod:`stbench.nn.sharded`).

Importing this module does not import torch.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import OptionError, StbenchError

#: ``-o precision=``: ``auto`` is bf16 autocast on CUDA and float32 elsewhere (what stbench always did).
PRECISIONS = ("auto", "bf16-mixed", "32")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The initialised process group's world, or a single process."""
    if "torch" not in sys.modules:
        return World()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    env = launched() or World(dist.get_rank(), dist.get_world_size(), 0, 1)
    return World(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_size)


def launched(env: Mapping[str, str] | None = None) -> World | None:
    """The world a launcher started this process in: torchrun's (or ``--devices``') variables, or SLURM's
    (``srun``, one task per device); None when no launcher started several processes."""
    env = os.environ if env is None else env
    try:
        if "WORLD_SIZE" in env and "RANK" in env:
            w = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                      int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
        elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            tasks = int(env["SLURM_NTASKS"])
            per_node = int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0) or tasks
            w = World(int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", 0)), per_node)
        else:
            return None
    except ValueError:
        raise StbenchError("the launcher's RANK / WORLD_SIZE / SLURM_* variables are not integers") from None
    return w if w.size > 1 else None


def check_world(devices: int, num_nodes: int, env: Mapping[str, str] | None = None) -> World | None:
    """The launched world, checked against ``--devices`` (processes per node) and ``--num-nodes``; None for
    one process, or for ``--devices N`` on one machine that stbench launches itself."""
    env = os.environ if env is None else env
    wanted = devices * num_nodes
    # SLURM's variables are set in a whole batch script: they mean a launch only when several processes are asked for
    w = launched(env) if wanted > 1 or "WORLD_SIZE" in env else None
    if w is None:
        if num_nodes > 1:
            raise StbenchError(f"--num-nodes {num_nodes} needs a launcher on every node (torchrun or srun, see "
                               f"docs/cluster.md); on one machine use --devices N alone")
        return None
    if wanted > 1 and w.size != wanted:
        raise StbenchError(f"the launcher started {w.size} processes but --devices {devices} --num-nodes {num_nodes} "
                           f"asks for {wanted}; make them agree")
    return w


def check_devices(devices: int, device: str) -> None:
    """``--devices N`` against what this machine has (CUDA: N visible GPUs; the CPU: any N processes)."""
    if devices < 1:
        raise StbenchError(f"--devices must be 1 or more, not {devices}")
    if devices == 1:
        return
    if device.startswith("mps"):
        raise StbenchError("--devices N > 1 needs CUDA GPUs or the CPU (--device cpu); MPS has no multi-process backend")
    if device.startswith("cuda:"):
        raise StbenchError(f"--devices {devices} gives each process its own GPU: use --device cuda (not {device}); "
                           f"CUDA_VISIBLE_DEVICES chooses which GPUs")
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if devices > have:
            raise StbenchError(f"--devices {devices} asks for {devices} GPUs but this machine has {have}; "
                               f"use --devices {max(have, 1)} or --device cpu")


def resolve_precision(precision: str, device: str) -> str:
    """``bf16-mixed`` or ``32`` for ``precision`` on ``device``; an OptionError for bf16 off CUDA."""
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    cuda = device.startswith("cuda")
    if precision == "auto":
        return "bf16-mixed" if cuda else "32"
    if precision == "bf16-mixed" and not cuda:
        raise OptionError(f"-o precision=bf16-mixed needs a CUDA device (this run's is {device}); "
                          f"use precision=32 or auto")
    return precision


def check_precision(options: Any, device: str) -> str | None:
    """The precision a model's options ask for on ``device`` (None when the model has no such option)."""
    precision = getattr(options, "precision", None)
    return None if precision is None else resolve_precision(str(precision), device)


# -- the process group ---------------------------------------------------------------------------------
_COORD: Any = None  # a gloo group with a long timeout, for waits that are not training steps


def init(device: str, w: World) -> str:
    """Join the process group (NCCL on CUDA, gloo otherwise) and return this rank's device."""
    global _COORD
    import torch
    import torch.distributed as dist

    os.environ.setdefault("RANK", str(w.rank))
    os.environ.setdefault("WORLD_SIZE", str(w.size))
    os.environ.setdefault("LOCAL_RANK", str(w.local_rank))
    if "MASTER_ADDR" not in os.environ:
        raise StbenchError("MASTER_ADDR is not set: under srun export MASTER_ADDR (the first node's host name) and "
                           "MASTER_PORT, or launch with torchrun (docs/cluster.md)")
    os.environ.setdefault("MASTER_PORT", "29500")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(w.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=w.rank, world_size=w.size,
                                timeout=datetime.timedelta(minutes=30))
        _COORD = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    return f"cuda:{w.local_rank}" if cuda else device


def shutdown() -> None:
    global _COORD
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    _COORD = None


def rank_device(device: str) -> str:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) when several processes train."""
    w = world()
    return f"cuda:{w.local_rank}" if w.size > 1 and device == "cuda" else device


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write caches), the other ranks after it (they read them)."""
    w = world()
    if w.size == 1:
        yield
        return
    import torch.distributed as dist

    if not w.main:
        dist.barrier(group=_COORD)
    yield
    if w.main:
        dist.barrier(group=_COORD)


def all_sum(values: list[float], device: str) -> list[float]:
    """Elementwise sums over the ranks (float64), without gradients; ``values`` as they are for one process."""
    if world().size == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -- checkpoints for --resume -------------------------------------------------------------------------------
_CHECKPOINTS: contextvars.ContextVar[tuple[Path | None, bool]] = contextvars.ContextVar("stbench_checkpoints",
                                                                                         default=(None, False))


@contextlib.contextmanager
def checkpointing(folder: Path | None, resume: bool = False) -> Iterator[None]:
    """Within the block, :func:`stbench.nn.trainer.fit` writes its last-epoch state into ``folder`` after
    every epoch (rank 0) and, with ``resume``, starts from the state found there."""
    token = _CHECKPOINTS.set((Path(folder) if folder is not None else None, resume))
    try:
        yield
    finally:
        _CHECKPOINTS.reset(token)


def checkpoint_settings() -> tuple[Path | None, bool]:
    return _CHECKPOINTS.get()


# -- launching on one machine --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_launch(args: list[str], n: int, *, cpu: bool) -> int:
    """Run ``python -m stbench ARGS`` as ``n`` processes with torchrun's environment; rank 0 keeps stdout.
    The first process to fail stops the others; returns its exit status (0 when all succeed)."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n), "TORCHELASTIC_RUN_ID": "stbench"}
    if cpu and "OMP_NUM_THREADS" not in os.environ:
        base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    procs = [subprocess.Popen([sys.executable, "-m", "stbench", *args],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=None if r == 0 else subprocess.DEVNULL) for r in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return failed[0] if failed else 0
