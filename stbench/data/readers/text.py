"""Message text shared by the readers: every error is one line, and lists of names are shortened the same way."""
from __future__ import annotations

from typing import Any, Sequence


def one_line(text: Any) -> str:
    """``text`` as a single line (newlines and runs of blanks collapsed)."""
    return " ".join(str(text).split())


def shown(items: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` of ``items`` comma-separated, with how many there are in all when some are left out."""
    items = list(items)
    text = ", ".join(str(x) for x in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")
