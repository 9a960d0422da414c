"""The checks a slide read must pass, each failing with a one-line :class:`~stbench.errors.DataError` that
names the slide and the fix: the AnnData contract of :mod:`stbench.data.readers.base` (``check_slide_adata``)
and the two data checks readers run before it (the counts/positions join, spot centres inside the image)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import DataError
from .text import one_line, shown

log = logging.getLogger("stbench")

#: The keys every reader writes to ``uns['stbench']``.
STBENCH_UNS_KEYS = ("image_path", "image_scale", "pixel_size_um", "reader", "reader_version", "source_files")


# --------------------------------------------------------------------------------------------- contract


def check_slide_adata(adata: Any, where: str, counts_file: Any = None) -> None:
    """Raise :class:`DataError` (one line starting with ``where``) unless ``adata`` meets the reader contract.

    Checked: non-empty; unique obs/var names; ``X`` numeric, finite and non-negative; ``obsm['spatial']``
    a float (N, 2) finite array; ``obs`` columns ``array_row``/``array_col`` of integer dtype and
    ``slide``/``patient`` of non-empty strings; ``uns['stbench']`` with ``image_path`` (str), ``image_scale``
    (positive float), ``pixel_size_um`` (positive float or None), ``reader``/``reader_version`` (str) and
    ``source_files`` (list of str). ``counts_file`` names the counts in the message about bad counts.
    """
    import anndata

    if not isinstance(adata, anndata.AnnData):
        problem = f"the reader returned {type(adata).__name__}, not an AnnData"
    else:
        problem = (shape_problem(adata) or counts_problem(adata.X, counts_file) or spatial_problem(adata)
                   or obs_problem(adata.obs) or uns_problem(adata.uns.get("stbench")))
    if problem:
        raise DataError(one_line(f"{where}: {problem}"))


def shape_problem(adata: Any) -> str | None:
    """Not empty, and unique spot and gene names."""
    n_obs, n_vars = adata.shape
    if n_obs == 0 or n_vars == 0:
        return f"no spots or no genes were read ({n_obs} spots x {n_vars} genes); check the input files"
    for axis, names in (("obs (spot barcodes)", adata.obs_names), ("var (gene symbols)", adata.var_names)):
        if not names.is_unique:
            dups = names[names.duplicated()].unique()
            return f"{axis} names are not unique ({shown(dups)}); make them unique"
    return None


def counts_problem(X: Any, counts_file: Any = None) -> str | None:
    """Raw counts: numbers, finite and non-negative."""
    import scipy.sparse as sp

    counts = f"the counts in {counts_file}" if counts_file else "the count matrix (X)"
    if X is None:
        return "X is empty; the reader must store raw counts in X"
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        return f"{counts} are not numbers ({data.dtype}); give raw counts"
    if data.size:
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            return f"{counts} hold NaN or infinite values; give raw counts"
        if data.min() < 0:
            return (f"{counts} hold negative values (min {float(data.min()):g}); give raw counts, "
                    f"not normalised or scaled data")
    return None


def spatial_problem(adata: Any) -> str | None:
    """``obsm['spatial']``: a finite float array of (x, y) per spot."""
    import pandas as pd

    if "spatial" not in adata.obsm:
        return "obsm['spatial'] is missing; store full-resolution (x, y) pixel centres there"
    xy = adata.obsm["spatial"]
    if isinstance(xy, pd.DataFrame):
        return "obsm['spatial'] is a DataFrame; store a float numpy array of shape (N, 2)"
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape != (adata.n_obs, 2):
        return f"obsm['spatial'] has shape {xy.shape}, expected ({adata.n_obs}, 2) = (x, y) per spot"
    if not np.issubdtype(xy.dtype, np.floating):
        return f"obsm['spatial'] has dtype {xy.dtype}, expected float"
    if not np.isfinite(xy).all():
        return "obsm['spatial'] holds NaN or infinite coordinates; drop those spots"
    return None


def obs_problem(obs: Any) -> str | None:
    """``obs``: integer ``array_row``/``array_col``, non-empty string ``slide``/``patient``."""
    import pandas as pd

    for col in ("array_row", "array_col"):
        if col not in obs:
            return f"obs['{col}'] is missing"
        if not pd.api.types.is_integer_dtype(obs[col].dtype):
            return f"obs['{col}'] has dtype {obs[col].dtype}, expected int"
    for col in ("slide", "patient"):
        if col not in obs:
            return f"obs['{col}'] is missing"
        values = obs[col]
        if values.isna().any() or not all(isinstance(v, str) and v for v in values.unique()):
            return f"obs['{col}'] must hold non-empty strings"
    return None


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (float, int, np.floating, np.integer)) and bool(
        np.isfinite(value) and value > 0)


def uns_problem(meta: Any) -> str | None:
    """``uns['stbench']``: the keys of :data:`STBENCH_UNS_KEYS`, each of its type."""
    if not isinstance(meta, Mapping):
        return "uns['stbench'] is missing; see stbench/data/readers/base.py for its keys"
    missing = [k for k in STBENCH_UNS_KEYS if k not in meta]
    if missing:
        return f"uns['stbench'] lacks key(s) {', '.join(missing)}"
    if not isinstance(meta["image_path"], str) or not meta["image_path"]:
        return "uns['stbench']['image_path'] must be a non-empty str"
    if not _positive(meta["image_scale"]):
        return f"uns['stbench']['image_scale'] must be a positive float, got {meta['image_scale']!r}"
    if meta["pixel_size_um"] is not None and not _positive(meta["pixel_size_um"]):
        return f"uns['stbench']['pixel_size_um'] must be a positive float or None, got {meta['pixel_size_um']!r}"
    for key in ("reader", "reader_version"):
        if not isinstance(meta[key], str) or not meta[key]:
            return f"uns['stbench']['{key}'] must be a non-empty str"
    files = meta["source_files"]
    if not isinstance(files, (list, tuple, np.ndarray)) or not all(isinstance(f, str) for f in files):
        return "uns['stbench']['source_files'] must be a list of str paths"
    return None


# ------------------------------------------------------------------------------------------ data checks


def match_rate_check(n_matched: int, n_counts: int, n_positions: int, where: str, min_rate: float = 0.9, *,
                     counts_only: Sequence[str] = (), positions_only: Sequence[str] = (),
                     counts_label: str = "count matrix", positions_label: str = "positions file") -> float:
    """Check the join of count-matrix spots with position rows; return the match rate.

    The rate is ``n_matched / n_counts``: the fraction of count spots that found a position (every spot
    with counts needs a location; positions without counts are normal, e.g. a filtered or subset matrix).
    Spots in the counts but not the positions are logged at WARNING (they are dropped); positions without
    counts at INFO. ``counts_only``/``positions_only`` are example barcodes for the messages. Raises
    :class:`DataError` when the rate is below ``min_rate``.
    """
    n_counts_only = n_counts - n_matched
    n_positions_only = n_positions - n_matched
    if n_counts_only < 0 or n_positions_only < 0:
        raise ValueError("n_matched cannot exceed n_counts or n_positions")
    if n_counts_only:
        ex = f" (e.g. {', '.join(map(str, list(counts_only)[:3]))})" if len(counts_only) else ""
        log.warning("%s: %d of %d spots in the %s have no row in the %s%s; they are dropped",
                    where, n_counts_only, n_counts, counts_label, positions_label, ex)
    if n_positions_only:
        ex = f" (e.g. {', '.join(map(str, list(positions_only)[:3]))})" if len(positions_only) else ""
        log.info("%s: %d of %d rows of the %s have no spot in the %s%s; they are dropped",
                 where, n_positions_only, n_positions, positions_label, counts_label, ex)
    if n_counts == 0:
        raise DataError(one_line(f"{where}: the {counts_label} has no spots; check that it is the right file"))
    rate = n_matched / n_counts
    if rate < min_rate:
        ex = f", e.g. {', '.join(map(str, list(counts_only)[:3]))}" if len(counts_only) else ""
        raise DataError(one_line(
            f"{where}: only {n_matched} of {n_counts} spots ({rate:.0%}) in the {counts_label} have a row in the "
            f"{positions_label} (minimum {min_rate:.0%}; {n_counts_only} unmatched{ex}); check that both files "
            f"belong to the same slide and use the same barcode format"))
    return rate


def check_in_image(spatial: np.ndarray, scale: float, size: tuple[int, int], image: Path, where: str,
                   slack_px: float = 0.5, max_outside: float = 0.1) -> None:
    """Spot centres (times ``scale``) outside the image (``size`` = width, height): a few are an input
    error for those spots only (warned here; the patch cache drops and counts them); more than
    ``max_outside`` of them means the image does not belong to the slide, which raises."""
    xy = np.asarray(spatial, dtype=float) * scale
    w, h = size
    outside = ((xy[:, 0] < -slack_px) | (xy[:, 1] < -slack_px) | (xy[:, 0] > w + slack_px)
               | (xy[:, 1] > h + slack_px))
    if not outside.any():
        return
    message = (f"{where}: {int(outside.sum())} of {len(xy)} spot centres lie outside the image {image} ({w} x {h} px; "
               f"x range {xy[:, 0].min():.0f}-{xy[:, 0].max():.0f}, y range {xy[:, 1].min():.0f}-{xy[:, 1].max():.0f})")
    if outside.mean() > max_outside:
        raise DataError(one_line(message + "; check that the image belongs to this slide "
                                           "(or set params check_bounds = false)"))
    log.warning("%s; those spots are dropped when patches are cut", message)
