"""Assembling the AnnData of one slide from what a reader parsed (counts, spot grid, coordinates, image):
written once here so that every reader returns the same contract (see :mod:`stbench.data.readers.base`)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .checks import check_slide_adata
from .text import one_line, shown

if TYPE_CHECKING:
    from .base import SlideReader

log = logging.getLogger("stbench")


def unique_gene_symbols(names: Iterable[Any], where: str = "") -> list[str]:
    """Gene symbols made unique with anndata's convention (the 2nd ``SYMBOL`` becomes ``SYMBOL-1``, ...).

    Missing or empty names become ``"unnamed"``. Duplicates are logged and reported with a
    ``warnings.warn`` (UserWarning).
    """
    import pandas as pd
    from anndata.utils import make_index_unique

    raw = ["unnamed" if (n is None or (isinstance(n, float) and np.isnan(n)) or str(n).strip() == "")
           else str(n).strip() for n in names]
    index = pd.Index(raw, dtype=object)
    if index.is_unique:
        return raw
    dups = index[index.duplicated()].unique()
    msg = one_line(f"{where + ': ' if where else ''}{len(dups)} duplicated gene symbol(s) ({shown(dups)}) "
                   f"were made unique as SYMBOL-1, SYMBOL-2, ...")
    log.warning("%s", msg)
    warnings.warn(msg, UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's note on suffix collisions
        return [str(n) for n in make_index_unique(index)]


def counts_matrix(X: Any) -> Any:
    """Counts as a scipy CSR matrix of float32."""
    import scipy.sparse as sp

    return X.tocsr().astype(np.float32, copy=False) if sp.issparse(X) else sp.csr_matrix(np.asarray(X, dtype=np.float32))


def n_zero_count_spots(X: Any) -> int:
    """How many spots (rows of ``X``) have no counts at all."""
    return int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())


def um_per_px_text(pixel_size_um: float | None) -> str:
    """The pixel size as log lines show it."""
    return "unknown" if pixel_size_um is None else f"{pixel_size_um:.4g}"


def spot_obs(barcodes: Any, array_row: Any, array_col: Any, slide: str, patient: str) -> Any:
    """The ``obs`` table of the contract: spot barcodes as index, integer grid row/col, slide and patient."""
    import pandas as pd

    n = len(barcodes)
    return pd.DataFrame({
        "array_row": np.asarray(array_row, dtype=np.int64),
        "array_col": np.asarray(array_col, dtype=np.int64),
        "slide": np.full(n, slide, dtype=object),
        "patient": np.full(n, patient, dtype=object),
    }, index=pd.Index(barcodes, name=None))


def build_slide(reader: "SlideReader", *, X: Any, obs: Any, var: Any, spatial: np.ndarray, image: Path,
                image_scale: float, pixel_size_um: float | None, source_files: Sequence[str], where: str,
                counts_file: Any, summary: str, extra_uns: Mapping[str, Any] | None = None) -> Any:
    """The slide's AnnData: counts ``X`` (stored as CSR float32), ``obs`` (see :func:`spot_obs`), ``var``,
    ``obsm['spatial']`` and ``uns['stbench']`` (the contract keys, then ``extra_uns``, then
    ``n_zero_count_spots``), checked with :func:`check_slide_adata` and logged as
    ``"<where>: read N spots x G genes <summary>"``."""
    import anndata

    X = counts_matrix(X)
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = spatial
    adata.uns["stbench"] = {
        "image_path": str(image),
        "image_scale": float(image_scale),
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
        "reader": reader.name,
        "reader_version": reader.version,
        "source_files": list(source_files),
        **(extra_uns or {}),
        "n_zero_count_spots": n_zero_count_spots(X),
    }
    check_slide_adata(adata, where, counts_file=counts_file)
    log.info("%s: read %d spots x %d genes %s", where, adata.n_obs, adata.n_vars, summary)
    return adata
