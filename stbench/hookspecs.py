"""The whole extension surface of stbench: five hooks.

A plugin is a module (or object) with functions decorated by ``stbench.hookimpl`` whose names are
the hooks below. It is found through the entry-point group ``stbench`` in its package metadata::

    [project.entry-points.stbench]
    my_models = "my_package.stbench_plugin"

or, for a single file, with ``stbench --plugins-dir DIR``. Each hook receives a ``register``
callable; call it once per thing you add. Names must be unique across all plugins: a duplicate is a
startup error naming both plugins.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("stbench")
hookimpl = pluggy.HookimplMarker("stbench")


@hookspec
def register_models(register: Callable[[type], None]) -> None:
    """Register ``stbench.Model`` subclasses: ``register(MyModel)``. The name is ``MyModel.name``."""


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register ``stbench.dataset.Dataset`` instances: ``register(dataset)``, named ``dataset.name``."""


@hookspec
def register_readers(register: Callable[[Any], None]) -> None:
    """Register data readers (``stbench.data.readers.Reader`` instances), named by ``reader.name``."""


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register ``stbench.metric.Metric`` instances, named by ``metric.name``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``stbench`` command group: ``@cli.command() def mine(): ...``."""
