"""Slide geometry: micrometres per pixel from the spot pitch, an image's size from its header, and grid
indices for spots that only have coordinates."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .text import one_line

log = logging.getLogger("stbench")

TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
# Plausible full-resolution pixel sizes of H&E scans (HEST: 0.17-1.06 um/px); outside -> warning.
PLAUSIBLE_UM_PER_PX = (0.1, 2.0)


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


def grid_index(values: np.ndarray, tol: float) -> np.ndarray:
    """Dense rank of ``values`` after merging values closer than ``tol`` (consecutive, sorted) into one level."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    steps = np.diff(values[order]) > tol
    levels = np.concatenate([[0], np.cumsum(steps)])
    out = np.empty(len(values), dtype=np.int64)
    out[order] = levels
    return out


def grid_from_coordinates(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(array_row, array_col) for spots without grid indices: ranks of y and x coordinate levels.

    Coordinates within a quarter of the median nearest-neighbour distance count as one level, so a
    regular (square or hex) lattice gets consecutive row/column numbers; on a rotated or irregular layout
    they are only an ordering, not grid indices.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        return np.zeros(len(xy), np.int64), np.zeros(len(xy), np.int64)
    dist, _ = cKDTree(xy).query(xy, k=2)
    nn = dist[:, 1]
    nn = nn[nn > 0]
    tol = 0.25 * float(np.median(nn)) if len(nn) else 0.0
    return grid_index(xy[:, 1], tol), grid_index(xy[:, 0], tol)
