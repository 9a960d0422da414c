"""Checks and helpers shared by the slide readers.

``check_slide_adata`` enforces the AnnData contract in :mod:`stbench.data.readers.base`; the other helpers
(match rate of a counts/positions join, unique gene symbols, pixel size from spot pitch, image size
without decoding, file discovery by suffix) keep the readers short and their errors uniform: every
failure is a one-line :class:`~stbench.errors.DataError` that names the file or slide and the fix.
"""
from __future__ import annotations

import fnmatch
import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...errors import DataError, did_you_mean

log = logging.getLogger("stbench")

STBENCH_UNS_KEYS = ("image_path", "image_scale", "pixel_size_um", "reader", "reader_version", "source_files")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
# Plausible full-resolution pixel sizes of H&E scans (HEST: 0.17-1.06 um/px); outside -> warning.
PLAUSIBLE_UM_PER_PX = (0.1, 2.0)


def one_line(text: Any) -> str:
    """``text`` as a single line (newlines and runs of blanks collapsed)."""
    return " ".join(str(text).split())


def _shown(items: Sequence[Any], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# --------------------------------------------------------------------------------------------- contract


def check_slide_adata(adata: Any, where: str, counts_file: Any = None) -> None:
    """Raise :class:`DataError` (one line starting with ``where``) unless ``adata`` meets the reader contract.

    Checked: non-empty; unique obs/var names; ``X`` numeric, finite and non-negative; ``obsm['spatial']``
    a float (N, 2) finite array; ``obs`` columns ``array_row``/``array_col`` of integer dtype and
    ``slide``/``patient`` of non-empty strings; ``uns['stbench']`` with ``image_path`` (str), ``image_scale``
    (positive float), ``pixel_size_um`` (positive float or None), ``reader``/``reader_version`` (str) and
    ``source_files`` (list of str).
    """
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    def fail(msg: str) -> DataError:
        return DataError(one_line(f"{where}: {msg}"))

    if not isinstance(adata, anndata.AnnData):
        raise fail(f"the reader returned {type(adata).__name__}, not an AnnData")
    n_obs, n_vars = adata.shape
    if n_obs == 0 or n_vars == 0:
        raise fail(f"no spots or no genes were read ({n_obs} spots x {n_vars} genes); check the input files")
    for axis, names in (("obs (spot barcodes)", adata.obs_names), ("var (gene symbols)", adata.var_names)):
        if not names.is_unique:
            dups = names[names.duplicated()].unique()
            raise fail(f"{axis} names are not unique ({_shown(dups)}); make them unique")

    X = adata.X
    counts = f"the counts in {counts_file}" if counts_file else "the count matrix (X)"
    if X is None:
        raise fail("X is empty; the reader must store raw counts in X")
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise fail(f"{counts} are not numbers ({data.dtype}); give raw counts")
    if data.size:
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise fail(f"{counts} hold NaN or infinite values; give raw counts")
        if data.min() < 0:
            raise fail(f"{counts} hold negative values (min {float(data.min()):g}); give raw counts, "
                       f"not normalised or scaled data")

    if "spatial" not in adata.obsm:
        raise fail("obsm['spatial'] is missing; store full-resolution (x, y) pixel centres there")
    xy = adata.obsm["spatial"]
    if isinstance(xy, pd.DataFrame):
        raise fail("obsm['spatial'] is a DataFrame; store a float numpy array of shape (N, 2)")
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape != (n_obs, 2):
        raise fail(f"obsm['spatial'] has shape {xy.shape}, expected ({n_obs}, 2) = (x, y) per spot")
    if not np.issubdtype(xy.dtype, np.floating):
        raise fail(f"obsm['spatial'] has dtype {xy.dtype}, expected float")
    if not np.isfinite(xy).all():
        raise fail("obsm['spatial'] holds NaN or infinite coordinates; drop those spots")

    for col in ("array_row", "array_col"):
        if col not in adata.obs:
            raise fail(f"obs['{col}'] is missing")
        if not pd.api.types.is_integer_dtype(adata.obs[col].dtype):
            raise fail(f"obs['{col}'] has dtype {adata.obs[col].dtype}, expected int")
    for col in ("slide", "patient"):
        if col not in adata.obs:
            raise fail(f"obs['{col}'] is missing")
        values = adata.obs[col]
        if values.isna().any() or not all(isinstance(v, str) and v for v in values.unique()):
            raise fail(f"obs['{col}'] must hold non-empty strings")

    meta = adata.uns.get("stbench")
    if not isinstance(meta, Mapping):
        raise fail("uns['stbench'] is missing; see stbench/readers/base.py for its keys")
    missing = [k for k in STBENCH_UNS_KEYS if k not in meta]
    if missing:
        raise fail(f"uns['stbench'] lacks key(s) {', '.join(missing)}")
    if not isinstance(meta["image_path"], str) or not meta["image_path"]:
        raise fail("uns['stbench']['image_path'] must be a non-empty str")
    scale = meta["image_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (float, int, np.floating, np.integer)) or not (
            np.isfinite(scale) and scale > 0):
        raise fail(f"uns['stbench']['image_scale'] must be a positive float, got {scale!r}")
    px = meta["pixel_size_um"]
    if px is not None and (isinstance(px, bool) or not isinstance(px, (float, int, np.floating, np.integer))
                           or not (np.isfinite(px) and px > 0)):
        raise fail(f"uns['stbench']['pixel_size_um'] must be a positive float or None, got {px!r}")
    for key in ("reader", "reader_version"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise fail(f"uns['stbench']['{key}'] must be a non-empty str")
    files = meta["source_files"]
    if not isinstance(files, (list, tuple, np.ndarray)) or not all(isinstance(f, str) for f in files):
        raise fail("uns['stbench']['source_files'] must be a list of str paths")


# ---------------------------------------------------------------------------------------- joins, genes


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
    msg = one_line(f"{where + ': ' if where else ''}{len(dups)} duplicated gene symbol(s) ({_shown(dups)}) "
                   f"were made unique as SYMBOL-1, SYMBOL-2, ...")
    log.warning("%s", msg)
    warnings.warn(msg, UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's note on suffix collisions
        return [str(n) for n in make_index_unique(index)]


# ------------------------------------------------------------------------------------------ geometry


def estimate_pixel_size(spatial: Any, array_row: Any, array_col: Any, *, col_step: int,
                        um_per_step: float, where: str = "") -> float | None:
    """Micrometres per full-resolution pixel from the spot pitch; None when no neighbours are found.

    Pairs spots on the same ``array_row`` whose ``array_col`` differs by exactly ``col_step`` and takes
    the median Euclidean pixel distance of those pairs as ``um_per_step`` micrometres. Visium:
    ``col_step=2, um_per_step=100``; legacy ST (array_row = y, array_col = x): ``col_step=1,
    um_per_step=200``. A result outside 0.1-2 um/px is logged as a warning (wrong image or coordinates?).
    """
    import pandas as pd

    xy = np.asarray(spatial, dtype=float)
    df = pd.DataFrame({"r": np.asarray(array_row, dtype=np.int64), "c": np.asarray(array_col, dtype=np.int64),
                       "x": xy[:, 0], "y": xy[:, 1]}).drop_duplicates(["r", "c"])
    right = df.assign(c=df["c"] - col_step)
    pairs = df.merge(right, on=["r", "c"], suffixes=("", "_n"))
    pairs = pairs[np.isfinite(pairs[["x", "y", "x_n", "y_n"]].to_numpy()).all(axis=1)]
    prefix = f"{where}: " if where else ""
    if pairs.empty:
        log.warning("%scannot estimate the pixel size: no neighbouring spots on the spot grid; "
                    "set params pixel_size_um", prefix)
        return None
    step = float(np.median(np.hypot(pairs["x_n"] - pairs["x"], pairs["y_n"] - pairs["y"])))
    if step <= 0:
        log.warning("%scannot estimate the pixel size: neighbouring spots share a pixel position; "
                    "set params pixel_size_um", prefix)
        return None
    um_per_px = um_per_step / step
    lo, hi = PLAUSIBLE_UM_PER_PX
    if not lo <= um_per_px <= hi:
        log.warning("%sestimated pixel size %.4g um/px (from %d neighbour pairs) is outside the usual %g-%g; "
                    "check the coordinates or set params pixel_size_um", prefix, um_per_px, len(pairs), lo, hi)
    else:
        log.info("%sestimated pixel size %.4g um/px from %d neighbour pairs (median step %.1f px)",
                 prefix, um_per_px, len(pairs), step)
    return um_per_px


_PIL_LOCK = threading.Lock()


def image_size(path: Path, where: str = "") -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels (tifffile for TIFF, PIL otherwise)."""
    path = Path(path)
    prefix = f"{where}: " if where else ""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape = page.shape
                axes = getattr(page, "axes", "")
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
            return int(shape[1]), int(shape[0])
        from PIL import Image

        with _PIL_LOCK:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except FileNotFoundError:
        raise DataError(one_line(f"{prefix}image {path} does not exist; check the image file name")) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem
        raise DataError(one_line(f"{prefix}cannot read the image header of {path} ({type(e).__name__}: {e}); "
                                 f"replace the file with an intact TIFF/JPEG/PNG")) from None


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


# ---------------------------------------------------------------------------------------- files, params


def find_by_suffix(folders: Sequence[Path], suffixes: Sequence[str], *, what: str, where: str,
                   required: bool = True, name_filter: str | None = None, expected: str | None = None) -> Path | None:
    """The single file in ``folders`` whose name ends with one of ``suffixes`` (case-insensitive).

    Matches across all folders and suffixes are pooled; when several match and ``name_filter`` is given,
    only names containing it are kept. Zero (when ``required``) or several matches raise a one-line
    :class:`DataError` that lists what was expected.
    """
    sufs = tuple(s.lower() for s in suffixes)
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(sufs))
    if len(found) > 1 and name_filter:
        kept = [p for p in found if name_filter.lower() in p.name.lower()]
        found = kept or found
    if len(found) == 1:
        return found[0]
    looked = " or ".join(str(f) for f in folders)
    expected = expected or "a file named like " + ", ".join(f"*{s}" for s in suffixes)
    if not found:
        if not required:
            return None
        raise DataError(one_line(f"{where}: no {what} found in {looked}; expected {expected}"))
    names = _shown([p.name for p in found])
    raise DataError(one_line(f"{where}: several files could be the {what} ({names}) in {looked}; "
                             f"keep exactly one ({expected})"))


def check_params(params: Mapping[str, Any] | None, allowed: Mapping[str, str], where: str) -> dict[str, Any]:
    """``params`` as a dict; unknown keys raise a one-line DataError naming the allowed ones."""
    params = dict(params or {})
    for key in params:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"; known params: {', '.join(allowed)}"
            raise DataError(one_line(f"{where}: unknown reader param '{key}'{hint} (fix the dataset's params table)"))
    return params


def positive_float_param(params: Mapping[str, Any], key: str, where: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value > 0):
        raise DataError(one_line(f"{where}: reader param {key} must be a positive number, got {value!r}"))
    return float(value)


def bool_param(params: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise DataError(one_line(f"{where}: reader param {key} must be true or false, got {value!r}"))
    return value


def glob_one(folder: Path, pattern: str, *, what: str, where: str) -> Path:
    """The single file matching ``pattern`` (a name, a glob, or an absolute path) under ``folder``."""
    p = Path(pattern)
    if p.is_absolute():
        matches = [p] if p.is_file() else sorted(q for q in p.parent.glob(p.name) if q.is_file())
    else:
        matches = sorted(q for q in folder.glob(pattern) if q.is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(one_line(f"{where}: {what} '{pattern}' matches no file in {folder}; "
                                 f"fix params image (a file name or glob relative to {folder})"))
    raise DataError(one_line(f"{where}: {what} '{pattern}' matches several files "
                             f"({_shown([q.name for q in matches])}) in {folder}; make params image match one"))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pat) for pat in patterns)
