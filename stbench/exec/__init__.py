"""Where the runs of a grid execute: ``local`` (one after another in this process, the default),
``ray`` (Ray tasks on a cluster) or ``slurm`` (SLURM jobs through submitit).

``stbench.bench.run_grid`` skips the runs already complete and hands the rest to an executor; every
executor writes the results into the same folder, so resuming by configuration hash works the same
whichever ran them. Ray and submitit are optional (``pip install "stbench[cluster]"``).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import StbenchError
from .base import Executor, GridContext, Outcome, Task
from .local import LocalExecutor

EXECUTORS = ("local", "ray", "slurm")
EXTRA = "cluster"

__all__ = ["EXECUTORS", "Executor", "GridContext", "LocalExecutor", "Outcome", "Task", "get_executor", "require"]


def require(module: str, executor: str) -> ModuleType:
    """``import module`` for ``--executor executor``, or a one-line error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StbenchError(f"--executor {executor} needs the package '{module}', which is not installed; "
                           f"pip install \"stbench[{EXTRA}]\"") from None


def get_executor(name: str = "local", *, cpus: int | None = None, gpus: int | None = None,
                 mem_gb: float | None = None, ray_address: str | None = None,
                 slurm_profile: str | Path | None = None, slurm_partition: str | None = None,
                 slurm_time: str | None = None, slurm_cluster: str | None = None, device: str = "auto") -> Executor:
    """The executor ``name`` with each run's resources (``cpus`` default 1, ``gpus`` 0, ``mem_gb`` none);
    SLURM settings come from the arguments over the TOML ``slurm_profile``. ``device`` is the grid's:
    a CUDA device on a remote executor needs GPUs requested for each run."""
    if name not in EXECUTORS:
        raise StbenchError(f"unknown executor '{name}'; use {', '.join(EXECUTORS)}")
    _check_resources(cpus, gpus, mem_gb)
    if name != "ray" and ray_address:
        raise StbenchError("--ray-address needs --executor ray")
    slurm_given = [k for k, v in (("--slurm-profile", slurm_profile), ("--slurm-partition", slurm_partition),
                                  ("--slurm-time", slurm_time)) if v]
    if name != "slurm" and slurm_given:
        raise StbenchError(f"{slurm_given[0]} needs --executor slurm")
    if name == "local":
        given = [k for k, v in (("--cpus-per-run", cpus), ("--gpus-per-run", gpus), ("--mem-gb", mem_gb)) if v is not None]
        if given:
            raise StbenchError(f"{given[0]} applies to --executor ray or slurm (local runs use this machine as it is)")
        return LocalExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        executor: Executor = RayExecutor(require("ray", "ray"), ray_address, cpus or 1, gpus or 0, mem_gb)
        n_gpus = gpus or 0
    else:
        executor = _slurm(cpus, gpus, mem_gb, slurm_profile, slurm_partition, slurm_time, slurm_cluster)
        n_gpus = executor.parameters.get("gpus_per_node") or 0
    if device.startswith("cuda") and not n_gpus:
        raise StbenchError(f"--device {device} with --executor {name} needs --gpus-per-run 1 (or more)")
    return executor


def _slurm(cpus: int | None, gpus: int | None, mem_gb: float | None, profile: Any, partition: str | None,
           time: str | None, cluster: str | None) -> Executor:
    from .slurm import SlurmExecutor, load_profile, slurm_parameters

    submitit = require("submitit", "slurm")
    settings = load_profile(profile) if profile else {}
    params, own = slurm_parameters(settings, {"partition": partition, "time": time, "cpus_per_run": cpus,
                                              "gpus_per_run": gpus, "mem_gb": mem_gb, "cluster": cluster})
    return SlurmExecutor(submitit, params, own["cluster"], own["poll_seconds"], own["cpus"])


def _check_resources(cpus: Any, gpus: Any, mem_gb: Any) -> None:
    if cpus is not None and cpus < 1:
        raise StbenchError(f"--cpus-per-run must be at least 1, got {cpus}")
    if gpus is not None and gpus < 0:
        raise StbenchError(f"--gpus-per-run must be 0 or more, got {gpus}")
    if mem_gb is not None and mem_gb <= 0:
        raise StbenchError(f"--mem-gb must be positive, got {mem_gb}")
