"""What every executor shares: the runs handed to it, what comes back from each, and the loop that
waits on runs submitted to an engine (Ray, SLURM through submitit).

``stbench.bench.run_grid`` decides which runs are already complete (resume by configuration hash)
and hands only the others to an executor as :class:`Task` s; the executor reports each finished run
through :meth:`GridContext.finished`, which says whether the grid goes on (a failure without
``keep_going`` stops it: the remote executors then cancel the runs still queued or running).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..runner import RunRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One run to execute: its place in the grid, the request, a label for messages, why it runs
    (``not run yet`` or ``rerun: ...``) and the file its log goes to on a remote worker."""
    index: int
    request: RunRequest
    label: str
    why: str
    log: Path


@dataclass(frozen=True)
class Outcome:
    """What comes back from a run (small: no results, only where they are). ``status`` is ``ran``,
    ``failed`` or ``cancelled``; ``error`` is one line."""
    status: str
    path: str | None = None
    error: str = ""
    log: str | None = None


@dataclass
class GridContext:
    """What an executor needs of the grid: the plugins and ``run`` (in-process executor), the results
    folder, the progress callback, and where finished runs are recorded."""
    plugins: Any
    out_dir: Path
    total: int
    keep_going: bool = False
    progress: Callable[..., None] | None = None
    run: Callable[..., Any] | None = None
    done: int = 0
    results: list[tuple[Task, Outcome]] = field(default_factory=list)

    def report(self, *args: Any, **info: Any) -> None:
        if self.progress is not None:
            self.progress(*args, **info)

    def finished(self, task: Task, outcome: Outcome) -> bool:
        """Record a finished run; False when the grid must stop (a failure without keep_going)."""
        self.done += 1
        self.results.append((task, outcome))
        return outcome.status != "failed" or self.keep_going


class Executor:
    """Runs the tasks of a grid. ``execute`` returns "" or, when a failure stopped the grid, what
    became of the runs already submitted (``1 other run cancelled, 2 finished``)."""
    name = "executor"

    def describe(self) -> str:
        return self.name

    def execute(self, tasks: Sequence[Task], ctx: GridContext) -> str:
        raise NotImplementedError


class Backend:
    """An engine that runs :func:`stbench.exec.worker.run_remote` calls: submit them all, wait for
    some to finish, cancel the rest."""

    def submit(self, tasks: Sequence[Task]) -> list[Any]:
        raise NotImplementedError

    def wait(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        """Block until at least one of ``pending`` (task position -> handle) finished; their outcomes."""
        raise NotImplementedError

    def cancel(self, pending: dict[int, Any]) -> list[tuple[int, Outcome]]:
        """Cancel ``pending``; the outcome of each (``cancelled``, or what it finished with meanwhile)."""
        raise NotImplementedError


def drive(backend: Backend, tasks: Sequence[Task], ctx: GridContext) -> str:
    """Submit every task, record runs as they finish (with the grid's progress), and stop at the first
    failure unless keep_going: cancel what is still queued or running and say what became of it. An
    interrupt (Ctrl-C) cancels the submitted runs too."""
    pending = dict(enumerate(backend.submit(tasks)))
    ctx.report("grid", ctx.done, ctx.total)
    try:
        while pending:
            for i, outcome in backend.wait(pending):
                del pending[i]
                outcome = _visible(outcome)
                go_on = ctx.finished(tasks[i], outcome)
                ctx.report("grid", ctx.done, ctx.total, run=tasks[i].label)
                if not go_on:
                    return _stop(backend, tasks, pending, ctx)
    except KeyboardInterrupt:
        if pending:
            log.warning("interrupted: cancelling %d submitted run(s)", len(pending))
            backend.cancel(pending)
        raise
    return ""


def _stop(backend: Backend, tasks: Sequence[Task], pending: dict[int, Any], ctx: GridContext) -> str:
    if not pending:
        return "no other run was still queued or running"
    cancelled = finished = 0
    for i, outcome in backend.cancel(pending):
        if outcome.status == "cancelled":
            cancelled += 1
        else:
            finished += 1
            ctx.finished(tasks[i], _visible(outcome))
    return f"{_runs(cancelled, 'other run')} cancelled, {finished} finished meanwhile"


def _visible(outcome: Outcome) -> Outcome:
    """A run that reports a results file the driver cannot see wrote it on another filesystem."""
    if outcome.status == "ran" and outcome.path and not Path(outcome.path).exists():
        return Outcome("failed", None, f"the worker wrote {outcome.path}, which is not visible here; "
                                       "put --out on a filesystem every worker shares", outcome.log)
    return outcome


def _runs(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def one_line(e: BaseException) -> str:
    """An exception as one line: stbench's own errors as they are, others with their type."""
    from ..errors import StbenchError

    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, StbenchError) else f"{type(e).__name__}: {first}".rstrip(": ")
