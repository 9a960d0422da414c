"""10x Genomics files shared by the Visium and Visium HD readers: the count matrix (the 10x HDF5
``filtered_feature_bc_matrix.h5`` or the MatrixMarket folder), Space Ranger's ``scalefactors_json.json``,
and the one-line message for a file that cannot be read. Counts stay sparse (CSR) throughout."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .build import unique_gene_symbols
from .text import one_line


def open_text(path: Path):
    """A text file, gunzipped when its name ends in ``.gz``."""
    return gzip.open(path, "rt", encoding="utf-8") if path.name.lower().endswith(".gz") else open(
        path, encoding="utf-8")


def read_error(path: Path, e: Exception, what: str) -> DataError:
    """The one-line error for a file that exists but cannot be parsed."""
    return DataError(one_line(f"cannot read {what} {path} ({type(e).__name__}: {e}); "
                              f"re-download or re-export the file"))


def read_10x_h5(path: Path, where: str) -> Any:
    """A 10x HDF5 count matrix (``scanpy.read_10x_h5``: CSR barcodes x genes, Gene Expression features
    only, gene symbols as var names made unique, ``gene_ids`` and ``feature_types`` in var)."""
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*names are not unique.*")
            adata = sc.read_10x_h5(str(path))
    except Exception as e:  # noqa: BLE001
        raise read_error(path, e, "10x h5 count matrix") from None
    adata.var_names = unique_gene_symbols(adata.var_names, f"{where}: {path.name}")
    adata.obs_names = [str(b).strip() for b in adata.obs_names]
    return adata


def read_10x_mtx(mtx: Path, bc: Path, ft: Path, where: str) -> Any:
    """A MatrixMarket count matrix (features x barcodes) with its barcodes and features files, as an
    AnnData of CSR barcodes x genes (Gene Expression features only when the features file says so)."""
    import anndata
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    try:
        with (gzip.open(mtx, "rb") if mtx.name.lower().endswith(".gz") else open(mtx, "rb")) as fh:
            m = scipy.io.mmread(fh)
    except Exception as e:  # noqa: BLE001
        raise read_error(mtx, e, "MatrixMarket count matrix") from None
    try:
        barcodes = pd.read_csv(bc, sep="\t", header=None, dtype=str, compression="infer")[0].str.strip()
    except Exception as e:  # noqa: BLE001
        raise read_error(bc, e, "barcodes file") from None
    try:
        features = pd.read_csv(ft, sep="\t", header=None, dtype=str, compression="infer")
    except Exception as e:  # noqa: BLE001
        raise read_error(ft, e, "features file") from None
    m = sp.csr_matrix(m)
    if m.shape != (len(features), len(barcodes)):
        raise DataError(one_line(f"{where}: {mtx.name} is {m.shape[0]} x {m.shape[1]} (genes x barcodes) but "
                                 f"{ft.name} has {len(features)} rows and {bc.name} {len(barcodes)}; "
                                 f"the three files must come from the same matrix"))
    ids = features[0].to_numpy()
    symbols = features[1].to_numpy() if features.shape[1] > 1 else ids
    keep = np.ones(len(features), dtype=bool)
    if features.shape[1] > 2:
        keep = (features[2] == "Gene Expression").to_numpy()
        if not keep.any():
            keep[:] = True
    X = m[keep].T.tocsr()
    var = pd.DataFrame({"gene_ids": ids[keep]},
                       index=pd.Index(unique_gene_symbols(symbols[keep], f"{where}: {ft.name}")))
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()[keep]
    return anndata.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes.to_numpy())), var=var)


def read_scalefactors(path: Path, where: str) -> dict[str, Any]:
    """Space Ranger's ``scalefactors_json.json`` (optionally gzipped) as a dict."""
    try:
        with open_text(path) as fh:
            factors = json.load(fh)
    except Exception as e:  # noqa: BLE001
        raise read_error(path, e, "scale factors file") from None
    if not isinstance(factors, dict):
        raise DataError(one_line(f"{where}: {path} is not a JSON object of scale factors; re-export the Space "
                                 f"Ranger spatial/ folder"))
    return factors


def scale_factor(factors: dict[str, Any], key: str, path: Path, where: str, *, at_most: float | None = None) -> float:
    """``factors[key]`` as a positive float (at most ``at_most``); a one-line error naming the file when it is
    missing or not such a number."""
    value = factors.get(key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value) and value > 0)
    if ok and at_most is not None:
        ok = value <= at_most
    if not ok:
        expected = f"a number in (0, {at_most:g}]" if at_most is not None else "a positive number"
        got = "it is missing" if key not in factors else f"got {value!r}"
        raise DataError(one_line(f"{where}: {key} in {path} must be {expected} ({got}); re-export the Space "
                                 f"Ranger spatial/ folder"))
    return float(value)
