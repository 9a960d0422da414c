"""Where data lives: the data root (``STBENCH_DATA``) and the mirror (``STBENCH_MIRROR``)."""
from __future__ import annotations

import os
from pathlib import Path


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
