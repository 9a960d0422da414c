"""Write files so that a reader never sees half of one: temporary name, then rename.

A temporary is named ``.<target name>.<host>.<pid>.<random>.tmp``, so a later writer (or ``stbench
cache clear``) can tell a live writer's temporary from one a killed process left behind: on the same
host, the writer is dead when its pid is; a temporary of another host (a shared cluster filesystem) is
stale only when it has not changed for :data:`FOREIGN_STALE_SECONDS`.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import StbenchError

FOREIGN_STALE_SECONDS = 24 * 3600
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_LEGACY_TEMP = re.compile(r"^\.(?P<target>.+)\.[^.]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_target(path: Path) -> str | None:
    """The target file name a temporary belongs to, or None if ``path`` is not one of ours."""
    m = _TEMP.match(path.name) or _LEGACY_TEMP.match(path.name)
    return m.group("target") if m else None


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """True for a temporary whose writer is gone (dead pid here, or untouched for a day elsewhere)."""
    m = _TEMP.match(path.name)
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if m is None:
        return _LEGACY_TEMP.match(path.name) is not None and age > 3600
    if m.group("host") == _host():
        return not _pid_alive(int(m.group("pid")))
    return age > FOREIGN_STALE_SECONDS


def remove_stale_temps(folder: Path, target: str | None = None) -> list[Path]:
    """Delete the stale temporaries in ``folder`` (of ``target`` only, when given); returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        if (target is None or temp_target(p) == target) and is_stale_temp(p):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success only.

    Stale temporaries of the same target (left by a killed writer) are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise StbenchError(f"cannot write to {path.parent}: {e.strerror}; choose a writable folder") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
