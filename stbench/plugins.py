"""get_plugin_manager(): the one place that loads plugins and calls the register_* hooks.

Order: the core plugin (stbench's own readers, metrics and datasets), entry points of group ``stbench``
(the built-in model plugins under ``plugins/`` are declared there in stbench's own pyproject.toml, exactly
as a third party declares its own), then one-file plugins from ``--plugins-dir``. A plugin that fails to import is
recorded in ``Plugins.failures`` (``stbench plugins`` shows it) and the rest still load.

Environment: ``STBENCH_LOAD_PLUGINS=a,b`` loads only the named plugins (the core always loads;
empty loads none); ``STBENCH_TRACE_PLUGINS=1`` traces every hook call on stderr.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pluggy

from . import hookspecs
from .data.catalog import catalog_paths
from .errors import PluginError
from .registry import Registry

CORE_PLUGIN = "stbench.builtin"
ENTRY_POINT_GROUP = "stbench"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str
    version: str | None = None
    error: str | None = None


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    loaded: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginInfo] = field(default_factory=list)
    catalogs: tuple[Path, ...] = ()

    def _collect(self, hook_name: str, kind: str, name_of: Callable[[Any], str], check: Callable[[Any], None]) -> Registry:
        registry: Registry = Registry(kind)
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        for impl in impls:
            def register(item: Any, _origin: str = impl.plugin_name) -> None:
                try:
                    check(item)
                except PluginError as e:
                    raise PluginError(f"plugin '{_origin}': {e}") from None
                registry.add(name_of(item), item, _origin)
            others = [i.plugin for i in impls if i.plugin is not impl.plugin]
            call_one = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                call_one(register=register)
            except PluginError:
                raise
            except Exception as e:
                raise PluginError(f"plugin '{impl.plugin_name}' failed in {hook_name}: {type(e).__name__}: {e}") from e
        return registry

    @cached_property
    def models(self) -> Registry:
        from .model import Model

        def check(cls: Any) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Model)):
                raise PluginError(f"register_models got {cls!r}; register a stbench.Model subclass")
        return self._collect("register_models", "model", lambda c: c.name, check)

    @cached_property
    def metrics(self) -> Registry:
        from .metric import Metric

        def check(m: Any) -> None:
            if not isinstance(m, Metric):
                raise PluginError(f"register_metrics got {m!r}; register a stbench.Metric")
        return self._collect("register_metrics", "metric", lambda m: m.name, check)

    @cached_property
    def readers(self) -> Registry:
        from .data.readers.base import Reader

        def check(r: Any) -> None:
            if not isinstance(r, Reader):
                raise PluginError(f"register_readers got {r!r}; register a stbench.Reader instance")
        return self._collect("register_readers", "reader", lambda r: r.name, check)

    @cached_property
    def datasets(self) -> Registry:
        from .dataset import Dataset

        def check(d: Any) -> None:
            if not isinstance(d, Dataset):
                raise PluginError(f"register_datasets got {d!r}; register a stbench.Dataset instance")
        registry = self._collect("register_datasets", "dataset", lambda d: d.name, check)
        from .data.catalog_dataset import catalogue_datasets

        for dataset, path in catalogue_datasets(self.catalogs, self.readers):
            registry.add(dataset.name, dataset, f"catalogue {path}")
        return registry

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.pm.get_plugin(plugin_name)
        return sorted(h.name for h in (self.pm.get_hookcallers(plugin) or []))


def _dist_version(dist_name: str | None) -> str | None:
    if not dist_name:
        return None
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_file(path: Path) -> Any:
    mod_name = f"stbench_plugins_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def env_plugins_dirs(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The one-file plugin folders named by ``STBENCH_PLUGINS_DIR`` (paths separated by ``os.pathsep``)."""
    env = os.environ if env is None else env
    return tuple(p for p in env.get("STBENCH_PLUGINS_DIR", "").split(os.pathsep) if p)


def get_plugin_manager(plugins_dirs: Sequence[str | os.PathLike] = (), catalogs: Sequence[str] = (),
                       env: Mapping[str, str] | None = None) -> Plugins:
    env = os.environ if env is None else env
    pm = pluggy.PluginManager("stbench")
    pm.add_hookspecs(hookspecs)
    if env.get("STBENCH_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    only = env.get("STBENCH_LOAD_PLUGINS")
    allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
    plugins = Plugins(pm=pm, catalogs=tuple(catalog_paths(tuple(catalogs), env)))

    def add(name: str, source: str, load: Callable[[], Any], version: str | None = None) -> None:
        if name != CORE_PLUGIN and allowed is not None and name not in allowed:
            return
        if pm.has_plugin(name):
            plugins.failures.append(PluginInfo(name, source, version, f"a plugin named '{name}' is already loaded"))
            return
        try:
            pm.register(load(), name=name)
            try:
                pm.check_pending()
            except pluggy.PluginValidationError:
                pm.unregister(name=name)
                raise
        except Exception as e:  # a broken plugin must not take the others down
            last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            at = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
            plugins.failures.append(PluginInfo(name, source, version, f"{type(e).__name__}: {e}{at}"))
            return
        plugins.loaded.append(PluginInfo(name, source, version))

    add(CORE_PLUGIN, "core", lambda: importlib.import_module(CORE_PLUGIN), _dist_version("stbench"))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None)
        add(ep.name, f"entry point {ep.value}" + (f" of {dist_name}" if dist_name else ""), ep.load, _dist_version(dist_name))
    for directory in plugins_dirs:
        d = Path(directory)
        if not d.is_dir():
            raise PluginError(f"--plugins-dir {d} is not a directory")
        for path in sorted(d.glob("*.py")):
            add(path.stem, f"file {path}", lambda p=path: _import_file(p))
    return plugins
