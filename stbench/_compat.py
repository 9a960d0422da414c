"""The flat module paths of stbench 0.1 (``stbench.patch_cache``, ``stbench.leaderboard``, ...), kept
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
}
#: old packages (their submodules moved one by one)
PACKAGES: dict[str, str] = {}


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
