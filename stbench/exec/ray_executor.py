"""``--executor ray``: each run a Ray task with its resource request (CPUs, GPUs, memory), on a running
cluster (``--ray-address``) or a local instance started for the grid.

Ray schedules the tasks on the nodes that have the resources; every worker needs stbench (and the
plugins) installed and the results folder, data root and cache on a filesystem they share. Ray retries a
task whose worker died (node lost, killed for memory) by its default ``max_retries``; a run that fails
with an error is not retried, it is reported with its log and rerun by the next ``stbench bench``.
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Sequence

from ..errors import StbenchError
from .base import Backend, Executor, GridContext, Outcome, Task, drive, one_line
from .worker import WorkerSetup, run_remote

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, ray: Any, address: str | None = None, cpus: int = 1, gpus: int = 0,
                 mem_gb: float | None = None) -> None:
        self.ray, self.address = ray, address
        self.cpus, self.gpus, self.mem_gb = cpus, gpus, mem_gb

    def describe(self) -> str:
        where = f"the cluster at {self.address}" if self.address else "a local instance (or RAY_ADDRESS)"
        mem = f", {self.mem_gb:g} GB" if self.mem_gb else ""
        return f"ray on {where}; each run {self.cpus} CPU(s), {self.gpus} GPU(s){mem}"

    def execute(self, tasks: Sequence[Task], ctx: GridContext) -> str:
        started = self._connect()
        try:
            self._check_resources(started)
            setup = WorkerSetup.from_plugins(ctx.plugins, threads=self.cpus)
            return drive(_RayBackend(self, ctx, setup), tasks, ctx)
        finally:
            if started:
                self.ray.shutdown()

    def _connect(self) -> bool:
        """Connect to ``address`` (or start a local instance); True when this call started Ray."""
        ray = self.ray
        if self.address and self.address not in ("auto", "local"):
            _check_reachable(self.address)
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError, SystemExit) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise StbenchError(f"cannot connect to {where}: {one_line(e)}; check --ray-address "
                               "(host:port of the head node, or ray://host:10001 with ray[client])") from None
        return True

    def _check_resources(self, started: bool) -> None:
        """A request no node can ever meet waits forever: an error on the local instance this grid
        started, a warning on a cluster (an autoscaler may add such nodes)."""
        total = self.ray.cluster_resources()
        short = [f"{need:g} {name}" for name, need in (("CPU", self.cpus), ("GPU", self.gpus)) if need > total.get(name, 0)]
        if not short:
            return
        msg = (f"each run asks for {' and '.join(short)}, but the Ray cluster has {total.get('CPU', 0):g} CPU(s) "
               f"and {total.get('GPU', 0):g} GPU(s)")
        if started and not self.address:
            raise StbenchError(f"{msg}; lower --cpus-per-run / --gpus-per-run or pass --ray-address of a larger cluster")
        log.warning("%s; the runs wait until nodes with those resources join", msg)


class _RayBackend(Backend):
    def __init__(self, ex: RayExecutor, ctx: GridContext, setup: WorkerSetup) -> None:
        self.ray, self.ex, self.setup = ex.ray, ex, setup
        self.out = str(ctx.out_dir.resolve())
        self.remote = ex.ray.remote(run_remote)
        self.logs: dict[Any, str] = {}

    def submit(self, tasks: Sequence[Task]) -> list[Any]:
        opts: dict[str, Any] = {"num_cpus": self.ex.cpus, "num_gpus": self.ex.gpus}
        if self.ex.mem_gb:
            opts["memory"] = int(self.ex.mem_gb * 1024 ** 3)
        refs = []
        for t in tasks:
            t.log.parent.mkdir(parents=True, exist_ok=True)
            ref = self.remote.options(name=t.label, **opts).remote(t.request, self.out, self.setup, str(t.log))
            self.logs[ref] = str(t.log)
            refs.append(ref)
        return refs

    def wait(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        index = {ref: i for i, ref in pending.items()}
        ready: list[Any] = []
        while not ready:  # in short waits, so that Ctrl-C reaches Python (and cancels the runs)
            ready, _ = self.ray.wait(list(index), num_returns=1, timeout=1.0)
        return [(index[ref], self._get(ref)) for ref in ready]

    def cancel(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        for ref in pending.values():  # force: a gentle cancel waits for the run's C code (torch) to return
            self.ray.cancel(ref, force=True)
        return [(i, self._get(ref)) for i, ref in pending.items()]

    def _get(self, ref: Any) -> Outcome:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return Outcome("cancelled", None, "cancelled", self.logs.get(ref))
        except exceptions.RayError as e:  # the worker died (node lost, out of memory), not the run's own error
            return Outcome("failed", None, one_line(e), self.logs.get(ref))


def _check_reachable(address: str) -> None:
    """A quick TCP connect first: ``ray.init`` on an address nobody answers retries for minutes."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise StbenchError(f"--ray-address '{address}' is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise StbenchError(f"cannot reach the Ray cluster at {address} ({e.strerror or type(e).__name__}); "
                           "is the head node up (ray start --head) and the port open?") from None
