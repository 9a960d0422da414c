"""The prepared-matrix cache: each fold's preprocessed expression (genes, per-slide matrices and
barcodes, preprocessing info) in one HDF5 file under ``<cache>/prepared/<dataset>/<key>.h5``, keyed by a
hash of everything it depends on; written atomically, checksummed, and recomputed when unreadable."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from .preprocess import PreparedExpression

log = logging.getLogger("stbench")


def prepared_key(inputs: Mapping[str, Any]) -> str:
    """20 hex digits of the sha256 of ``inputs`` (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_prepared(path: Path, slides: Sequence[str]) -> PreparedExpression | None:
    """The cached matrices of ``slides``, or None when the file is absent or unreadable (logged)."""
    import h5py

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            genes = tuple(x.decode() for x in f["genes"][:])
            return PreparedExpression(
                genes, {s: f[f"slides/{s}/matrix"][:] for s in slides},
                {s: np.array([x.decode() for x in f[f"slides/{s}/barcodes"][:]]) for s in slides},
                json.loads(f.attrs["info"]))
    except (OSError, KeyError, ValueError) as e:
        log.warning("recomputing %s: unreadable prepared cache (%s)", path,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def write_prepared(path: Path, prepared: PreparedExpression, slides: Sequence[str]) -> None:
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("genes", data=np.array(prepared.genes, dtype="S"), fletcher32=True)
        for s in slides:
            f.create_dataset(f"slides/{s}/matrix", data=prepared.matrices[s], compression="gzip", fletcher32=True)
            f.create_dataset(f"slides/{s}/barcodes", data=np.array(prepared.barcodes[s], dtype="S"), fletcher32=True)
        f.attrs["info"] = json.dumps(prepared.info)
