"""stbench: benchmark toolkit for predicting spatial gene expression from H&E histology.

Importing stbench is cheap: no torch, no plugin loading, no network. The names a plugin author
needs are importable from here: ``hookimpl``, ``Model``, ``ModelCard``, ``SlidePatches``,
``Metric``, ``Dataset``, ``Fold``, ``PreparedFold``, ``Reader``, ``StbenchError`` and ``option``
(an Options field with a declared range). The Python API (docs/api.md), imported on first use:
``stbench.run``, ``stbench.train``, ``stbench.load`` and ``stbench.evaluate``.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from typing import Any

from . import _compat
from .dataset import Dataset, Fold, PreparedFold
from .errors import StbenchError
from .hookspecs import hookimpl
from .metric import Metric
from .model import Model, ModelCard
from .options import option
from .data.readers.base import Reader
from .slide import SlidePatches

try:
    __version__ = _version("stbench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

_compat.install()

_API = ("run", "train", "load", "evaluate")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'stbench' has no attribute {name!r}")


__all__ = [*_API, "__version__", "hookimpl", "Model", "ModelCard", "SlidePatches", "Metric", "Dataset", "Fold",
           "PreparedFold", "Reader", "StbenchError", "option"]
