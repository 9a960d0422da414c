"""Optional dependencies: features that need a package the core does not (figures: matplotlib and
umap-learn) import it through :func:`require`, which turns a missing package into a one-line error naming
the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import StbenchError

#: module -> the extra that installs it
EXTRAS = {"matplotlib": "figures", "umap": "figures"}


def require(module: str, feature: str) -> ModuleType:
    """``import module`` for ``feature``, or StbenchError: ``pip install "stbench[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise StbenchError(f"{feature} needs the package '{top}', which is not installed; "
                           f"pip install \"stbench[{extra}]\" (or stbench[all])") from None
