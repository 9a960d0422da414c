"""The ``stbench`` command line: the group (``app``) and one module per command family."""
from __future__ import annotations

from . import cache, data, info, models, predict, report, run  # noqa: F401  (each registers its commands on the group)
from .app import cli, main

__all__ = ["cli", "main"]
