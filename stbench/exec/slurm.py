"""``--executor slurm``: each run a SLURM job, submitted through submitit as one job array.

Parameters come from the command line (``--slurm-partition``, ``--slurm-time``, ``--gpus-per-run``,
``--cpus-per-run``, ``--mem-gb``) over a TOML profile (``--slurm-profile FILE``)::

    partition = "gpu"
    time = "04:00:00"          # or minutes: 240
    gpus_per_run = 1
    cpus_per_run = 8
    mem_gb = 64
    account = "mylab"          # also: qos, constraint, exclude, array_parallelism
    setup = ["module load cuda/12.1", "source ~/venvs/stbench/bin/activate"]
    [submitit]                 # anything else, passed to update_parameters as it is
    slurm_additional_parameters = { reservation = "benchmark" }

submitit keeps its sbatch scripts, pickles and the jobs' own stdout/stderr in ``<out>/logs/slurm``;
each run's log is ``<out>/logs/<model>/<dataset>.<protocol>.<hash>.log``. ``cluster = "local"`` in the
profile runs the same code path as local processes (submitit's LocalExecutor), for trying a profile.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import StbenchError
from .base import Backend, Executor, GridContext, Outcome, Task, drive, one_line
from .worker import WorkerSetup, run_remote

#: profile key -> submitit parameter (shared AutoExecutor names, or slurm_ ones)
_KEYS = {"partition": "slurm_partition", "gpus_per_run": "gpus_per_node", "cpus_per_run": "cpus_per_task",
         "mem_gb": "mem_gb", "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
         "exclude": "slurm_exclude", "array_parallelism": "slurm_array_parallelism", "setup": "slurm_setup"}
_OWN = {"time", "cluster", "poll_seconds", "submitit"}
CLUSTERS = ("slurm", "local", "debug")


def parse_time(value: Any) -> int:
    """SLURM's time limit in minutes, read as sbatch reads it: ``90`` (minutes), ``"M:SS"``,
    ``"H:MM:SS"``, ``"D-H"``, ``"D-H:MM"`` or ``"D-H:MM:SS"``; seconds round up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(value).strip())
    if isinstance(value, bool) or not m:
        raise StbenchError(f"SLURM time '{value}' is not minutes, H:MM:SS or D-H:MM:SS (e.g. 240 or 4:00:00)")
    days, rest = m.groups()
    parts = [int(x) for x in rest.split(":")]
    if days is None:
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    else:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    total = int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise StbenchError(f"SLURM time '{value}' is under a minute")
    return total


def load_profile(path: str | Path) -> dict[str, Any]:
    """A TOML profile; unknown keys are an error naming the known ones."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise StbenchError(f"cannot read --slurm-profile {p} ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise StbenchError(f"--slurm-profile {p} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(_KEYS) - _OWN)
    if unknown:
        raise StbenchError(f"--slurm-profile {p}: unknown key '{unknown[0]}'; known: {', '.join(sorted(set(_KEYS) | _OWN))}")
    return data


def slurm_parameters(profile: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(submitit parameters, own settings) from a profile and the command line (which wins; None = unset).
    A time limit is required: submitit's default is 5 minutes."""
    merged = {**profile, **{k: v for k, v in overrides.items() if v is not None}}
    if merged.get("time") is None:
        raise StbenchError("--executor slurm needs a time limit: --slurm-time 4:00:00 (or time in the --slurm-profile)")
    params: dict[str, Any] = {"timeout_min": parse_time(merged["time"]), "name": "stbench"}
    for key, name in _KEYS.items():
        if merged.get(key) is not None:
            params[name] = merged[key]
    for key in ("gpus_per_run", "cpus_per_run", "array_parallelism"):
        if key in merged and (isinstance(merged[key], bool) or not isinstance(merged[key], int) or merged[key] < 0):
            raise StbenchError(f"SLURM {key} must be a whole number >= 0, got {merged[key]!r}")
    if "mem_gb" in params:
        params["mem_gb"] = float(params["mem_gb"])
    if isinstance(params.get("slurm_setup"), str):
        params["slurm_setup"] = [params["slurm_setup"]]
    params.update(merged.get("submitit") or {})
    cluster = merged.get("cluster", "slurm")
    if cluster not in CLUSTERS:
        raise StbenchError(f"SLURM profile cluster '{cluster}' is not one of {', '.join(CLUSTERS)}")
    own = {"cluster": cluster, "poll_seconds": float(merged.get("poll_seconds", 15.0 if cluster == "slurm" else 0.5)),
           "cpus": int(merged.get("cpus_per_run") or 1)}
    return params, own


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, submitit: Any, parameters: Mapping[str, Any], cluster: str = "slurm",
                 poll_seconds: float = 15.0, cpus: int = 1) -> None:
        self.submitit, self.parameters = submitit, dict(parameters)
        self.cluster, self.poll_seconds, self.cpus = cluster, poll_seconds, cpus

    def describe(self) -> str:
        p = self.parameters
        where = f"partition {p['slurm_partition']}" if p.get("slurm_partition") else "the default partition"
        local = "" if self.cluster == "slurm" else f" (submitit's {self.cluster} executor)"
        return (f"slurm{local} on {where}; each run {p['timeout_min']} min, {p.get('cpus_per_task', 1)} CPU(s), "
                f"{p.get('gpus_per_node', 0)} GPU(s)" + (f", {p['mem_gb']:g} GB" if p.get("mem_gb") else ""))

    def execute(self, tasks: Sequence[Task], ctx: GridContext) -> str:
        folder = ctx.out_dir.resolve() / "logs" / "slurm"
        try:
            executor = self.submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        except RuntimeError as e:  # no srun here
            raise StbenchError(f"--executor slurm: {one_line(e)} (run stbench bench on a SLURM login node, or try a "
                               "profile here with cluster = \"local\")") from None
        try:
            executor.update_parameters(**self.parameters)
        except (NameError, AssertionError, ValueError, TypeError) as e:
            raise StbenchError(f"submitit refused the SLURM parameters: {one_line(e)}") from None
        setup = WorkerSetup.from_plugins(ctx.plugins, threads=self.cpus)
        return drive(_SubmititBackend(executor, ctx, setup, self.poll_seconds), tasks, ctx)


class _SubmititBackend(Backend):
    def __init__(self, executor: Any, ctx: GridContext, setup: WorkerSetup, poll_seconds: float) -> None:
        self.executor, self.setup, self.poll = executor, setup, poll_seconds
        self.out = str(ctx.out_dir.resolve())
        self.logs: list[str] = []

    def submit(self, tasks: Sequence[Task]) -> list[Any]:
        for t in tasks:
            t.log.parent.mkdir(parents=True, exist_ok=True)
        self.logs = [str(t.log) for t in tasks]
        n = len(tasks)
        try:
            jobs = self.executor.map_array(run_remote, [t.request for t in tasks], [self.out] * n,
                                           [self.setup] * n, self.logs)
        except Exception as e:  # sbatch missing or refusing the job: one line, with sbatch's reason
            raise StbenchError(f"SLURM submission failed: {one_line(e)}") from None
        return jobs

    def wait(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        while True:
            done = [(i, self._outcome(job)) for i, job in pending.items() if job.done()]
            if done:
                return done
            time.sleep(self.poll)

    def cancel(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        out = []
        for i, job in pending.items():
            if job.done():
                out.append((i, self._outcome(job)))
                continue
            job.cancel(check=False)
            out.append((i, Outcome("cancelled", None, "cancelled", self.logs[i])))
        return out

    def _outcome(self, job: Any) -> Outcome:
        try:
            return job.result()
        except Exception as e:  # the job itself died (time limit, memory, node): submitit's own logs say why
            try:
                why = f"ended {job.state} without a result"
            except Exception:  # sacct unavailable: what submitit said
                why = one_line(e)
            return Outcome("failed", None, f"SLURM job {job.job_id} {why}", str(job.paths.stderr))
