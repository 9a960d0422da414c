"""The flat module paths of stbench 0.1 (``stbench.data.patches``, ``stbench.leaderboard``, ...), kept
importable for one release: each old name is an alias module that forwards attribute access to the
module's new home and warns (DeprecationWarning) once when imported. Third-party plugins written against
0.1 keep working; new code imports the new paths (or the names ``stbench`` exports)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old module -> new module
MOVED: dict[str, str] = {
    "stbench.leaderboard": "stbench.report.leaderboard",
    "stbench.nn.contrastive": "stbench_contrastive.model",
    "stbench.nn.losses": "stbench_contrastive.losses",
    "stbench.locations": "stbench.data.locations",
    "stbench.catalog": "stbench.data.catalog",
    "stbench.catalog_dataset": "stbench.data.catalog_dataset",
    "stbench.synthetic": "stbench.data.synthetic",
    "stbench.fetch": "stbench.data.fetch",
    "stbench.download_sink": "stbench.data.fetch.sink",
    "stbench.download_lock": "stbench.data.fetch.lock",
    "stbench.discover": "stbench.data.fetch.discover",
    "stbench.readers.base": "stbench.data.readers.base",
    "stbench.readers.checks": "stbench.data.readers",
    "stbench.readers.visium": "stbench.data.readers.visium",
    "stbench.readers.st_legacy": "stbench.data.readers.st_legacy",
    "stbench.readers.anndata_reader": "stbench.data.readers.anndata_reader",
    "stbench.image_reader": "stbench.data.images",
    "stbench.patch_cache": "stbench.data.patches",
    "stbench.cache_admin": "stbench.data.cache",
    "stbench.preprocess": "stbench.data.preprocess",
    "stbench.loader": "stbench.data.loader",
    "stbench.metrics": "stbench.eval.metrics",
    "stbench.evaluation": "stbench.eval.scoring",
    "stbench.stats": "stbench.eval.stats",
    "stbench.results": "stbench.report.results",
    "stbench.predictions": "stbench.report.predictions",
    "stbench.figures": "stbench.report.figures",
    "stbench.export": "stbench.report.export",
    "stbench.thumbnail": "stbench.report.thumbnail",
    "stbench.progress": "stbench.cli.progress",
}
#: old packages (their submodules moved one by one)
PACKAGES: dict[str, str] = {"stbench.readers": "stbench.data.readers"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in MOVED or fullname in PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in PACKAGES)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED.get(module.__name__) or PACKAGES[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        module.__getattr__ = lambda name: getattr(target, name)  # type: ignore[attr-defined]
        module.__dir__ = lambda: dir(target)  # type: ignore[attr-defined]
        module.__doc__ = target.__doc__
        if module.__name__ in PACKAGES:
            module.__path__ = []  # type: ignore[attr-defined]


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
