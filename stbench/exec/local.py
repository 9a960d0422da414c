"""The default executor: the runs one after another in this process, with the progress of each run
(folds, epochs) going to the grid's callback. A run that fails with a StbenchError is recorded (with
``keep_going``) or stops the grid; any other exception propagates as it is."""
from __future__ import annotations

from typing import Sequence

from ..errors import StbenchError
from .base import Executor, GridContext, Outcome, Task


class LocalExecutor(Executor):
    name = "local"

    def execute(self, tasks: Sequence[Task], ctx: GridContext) -> str:
        for task in tasks:
            ctx.report("grid", task.index, ctx.total, run=task.label)
            try:
                _, path = ctx.run(ctx.plugins, task.request, ctx.out_dir, progress=ctx.progress)
            except StbenchError as e:
                if not ctx.finished(task, Outcome("failed", None, str(e))):
                    return ""
                continue
            ctx.finished(task, Outcome("ran", str(path) if path is not None else None))
        return ""
