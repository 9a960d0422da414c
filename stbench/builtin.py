"""The core plugin: stbench's own metrics and readers, registered like any third party's."""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_metrics(register):
    from .eval.metrics import BUILTIN_METRICS

    for metric in BUILTIN_METRICS:
        register(metric)


@hookimpl
def register_readers(register):
    from .data.readers.anndata_reader import AnnDataReader
    from .data.readers.st_legacy import STLegacyReader
    from .data.readers.visium import VisiumReader
    from .data.readers.visium_hd import VisiumHDReader
    from .data.synthetic import SyntheticReader

    for reader in (SyntheticReader(), VisiumReader(), VisiumHDReader(), STLegacyReader(), AnnDataReader()):
        register(reader)
