"""Turn the library's ``progress(task, completed, total, **info)`` callbacks into rich bars."""
from __future__ import annotations

from typing import Any


def _amount_column() -> Any:
    from rich.filesize import decimal
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        """``M/N`` for counts; sizes and the transfer rate for tasks reported with ``unit="bytes"``."""

        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else None
            if task.fields.get("unit") == "bytes":
                size = f"{decimal(int(task.completed))}/{total or decimal(int(task.total))}"
                rate = f"  {decimal(int(task.speed))}/s" if task.speed else ""
                return Text(size + rate)
            return Text(f"{int(task.completed)}/{total or int(task.total)}")

    return Amount()


class RichProgress:
    """One bar per task name; ``info`` (for example the running loss) is shown beside it."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), _amount_column(),
                             TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, task: str, completed: float, total: float | None = None, **info: Any) -> None:
        unit = info.pop("unit", None)
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        if task not in self._tasks:
            self._tasks[task] = self._bar.add_task(task, total=total, completed=completed, info=text, unit=unit)
        else:
            self._bar.update(self._tasks[task], completed=completed, total=total, info=text)
