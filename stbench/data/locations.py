"""Where data lives: the data root (``STBENCH_DATA``), the cache (``STBENCH_CACHE``) and the mirror
(``STBENCH_MIRROR``)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError


def data_root() -> Path:
    """Downloaded datasets: ``STBENCH_DATA``, else the platform's user data folder."""
    env = os.environ.get("STBENCH_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("stbench")) / "data"


def mirror() -> str | None:
    """A folder or URL holding every source at its catalogue ``path`` (offline copies, tests); it
    replaces the upstream URLs of every dataset."""
    return os.environ.get("STBENCH_MIRROR") or None


def cache_root() -> Path:
    """Patches, prepared matrices, features and weights: ``STBENCH_CACHE``, else the platform's user
    cache folder."""
    env = os.environ.get("STBENCH_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("stbench"))


def cache_dir(*parts: str) -> Path:
    """``cache_root()/parts...``, created and checked writable; a one-line error naming the fix when not."""
    root = cache_root()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".stbench-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to the stbench cache {root} ({e.strerror or type(e).__name__}); "
                        f"set STBENCH_CACHE to a writable folder") from None
    return path
