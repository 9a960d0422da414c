"""stbench: benchmark toolkit for predicting spatial gene expression from H&E histology.

Importing stbench is cheap: no torch, no plugin loading, no network. The names a plugin author
needs are importable from here: ``hookimpl``, ``Model``, ``ModelCard``, ``SlidePatches``,
``Metric``, ``Dataset``, ``Fold``, ``PreparedFold``, ``Reader``, ``StbenchError`` and ``option``
(an Options field with a declared range).
"""
from importlib.metadata import PackageNotFoundError, version as _version

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

__all__ = ["__version__", "hookimpl", "Model", "ModelCard", "SlidePatches", "Metric", "Dataset", "Fold",
           "PreparedFold", "Reader", "StbenchError", "option"]
