"""What runs on a remote worker (a Ray task, a SLURM job): one RunRequest into the shared results folder.

Nothing big or process-bound crosses to the worker: not the plugin manager (rebuilt here with
``get_plugin_manager`` from the driver's plugin folders and catalogue files), only the request, the
results folder, a :class:`WorkerSetup` and the log path. The run's output (stdout, stderr, stbench's
log records, progress lines and, on failure, the traceback) goes to that log file; what comes back is
an :class:`~stbench.exec.base.Outcome`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from ..runner import RunRequest
from .base import Outcome, one_line

#: Environment the worker gets from the driver, made absolute where it names folders.
_PATH_VARS = ("STBENCH_DATA", "STBENCH_CACHE")


@dataclass(frozen=True)
class WorkerSetup:
    """How to rebuild the driver's plugins on a worker, and the environment it runs in."""
    plugins_dirs: tuple[str, ...] = ()
    catalogs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    threads: int | None = None

    @classmethod
    def from_plugins(cls, plugins: Any, threads: int | None = None,
                     environ: Mapping[str, str] | None = None) -> "WorkerSetup":
        """The driver's one-file plugin folders and extra catalogues (``--catalog``, ``STBENCH_CATALOG``)
        as absolute paths, and its ``STBENCH_*`` variables (the catalogue variable emptied: its files
        are passed explicitly). ``threads`` is the torch thread count of each run (its CPUs)."""
        from ..data.catalog import PACKAGED

        environ = os.environ if environ is None else environ
        dirs = []
        for info in list(plugins.loaded) + list(plugins.failures):
            if info.source.startswith("file "):
                folder = str(Path(info.source[5:]).resolve().parent)
                if folder not in dirs:
                    dirs.append(folder)
        catalogs = tuple(str(Path(p).resolve()) for p in plugins.catalogs if Path(p) != PACKAGED)
        env = {k: v for k, v in environ.items() if k.startswith("STBENCH_") and k != "STBENCH_PLUGINS_DIR"}
        env["STBENCH_CATALOG"] = ""
        for key in _PATH_VARS:
            if env.get(key, "").strip():
                env[key] = str(Path(env[key]).expanduser().resolve())
        return cls(tuple(dirs), catalogs, tuple(sorted(env.items())), threads)


def run_remote(request: RunRequest, out_dir: str, setup: WorkerSetup, log_path: str) -> Outcome:
    """Run one request on this worker; the results file is written (atomically) into ``out_dir``."""
    from ..plugins import get_plugin_manager
    from ..runner import run

    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", buffering=1) as fh, _captured(fh), _environment(dict(setup.env)), _threads(setup.threads):
        print(f"# stbench run {request} on {socket.gethostname()} (pid {os.getpid()}), "
              f"{_dt.datetime.now().isoformat(timespec='seconds')}", file=fh)
        try:
            plugins = get_plugin_manager(setup.plugins_dirs, setup.catalogs)
            for f in plugins.failures:
                print(f"# warning: plugin '{f.name}' failed to load: {f.error} [{f.source}]", file=fh)
            _, path = run(plugins, request, out_dir, progress=LogProgress(fh))
        except Exception as e:  # reported to the driver with this log; the grid decides what follows
            traceback.print_exc(file=fh)
            return Outcome("failed", None, one_line(e), str(log_file))
        print(f"# done: {path}", file=fh)
    return Outcome("ran", str(path), "", str(log_file))


class LogProgress:
    """The runner's progress callback as log lines: every step of a task of up to 100 steps (folds,
    epochs), and of longer ones (batches) the first, the last and at most one every ``every`` seconds."""

    def __init__(self, fh: TextIO, every: float = 30.0) -> None:
        self.fh, self.every, self._last = fh, every, {}

    def __call__(self, task: str, completed: float, total: float | None = None, **info: Any) -> None:
        now = time.monotonic()
        edge = task not in self._last or completed == 0 or total is None or total <= 100 or completed >= total
        if not edge and now - self._last[task] < self.every:
            return
        self._last[task] = now
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        of = "?" if total is None else f"{total:g}"
        print(f"{time.strftime('%H:%M:%S')} {task} {completed:g}/{of} {text}".rstrip(), file=self.fh)


@contextlib.contextmanager
def _captured(fh: TextIO) -> Iterator[None]:
    """stdout, stderr and stbench's log records (warnings and up) into ``fh``."""
    handler = logging.StreamHandler(fh)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("stbench")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Torch threads = the run's CPUs (engines give a task a share of a node; torch would take it all)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
