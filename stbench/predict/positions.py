"""Spot positions of a slide to predict: a Space Ranger positions file, a table of pixel centres (the
her2st ``*_selection.tsv`` spot files among them), an (N, 2) array or a DataFrame.

Every form becomes a :class:`Positions`: barcodes, full-resolution (x, y) pixel centres, the spot-array
grid when the input has one, and, when that grid is a known platform's, the pixel size estimated from
the spot pitch (:func:`stbench.data.readers.geometry.estimate_pixel_size`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.readers.text import one_line, shown
from ..errors import DataError

log = logging.getLogger("stbench")

SPACERANGER_SUFFIXES = ("tissue_positions.csv", "tissue_positions.csv.gz", "tissue_positions_list.csv",
                        "tissue_positions_list.csv.gz", "tissue_positions_list.txt", "tissue_positions_list.txt.gz")
#: Spot pitch of the platforms whose grid gives the pixel size: (array_col step, micrometres per step).
PITCH = {"spaceranger": (2, 100.0), "st": (1, 200.0)}
EXPECTED = ("a Space Ranger tissue_positions.csv / tissue_positions_list.csv, or a CSV/TSV with a header "
            "naming pixel_x,pixel_y (her2st spot files) or x,y pixel centres")


@dataclass(frozen=True)
class Positions:
    """Spots to predict. ``grid`` is (x, y) = (array_col, array_row), None when the input has no grid;
    ``platform`` is ``"spaceranger"``, ``"st"`` (legacy ST / her2st spot file), ``"table"``, ``"array"``
    or ``"grid"`` (tiled by :mod:`stbench.predict.tissue`); ``um_per_px`` is the pixel size estimated from
    the spot pitch (None when the platform's pitch is unknown or no neighbours were found)."""

    barcodes: np.ndarray
    coords: np.ndarray
    grid: np.ndarray | None
    platform: str
    source: str
    um_per_px: float | None = None

    def __len__(self) -> int:
        return len(self.barcodes)

    def subset(self, keep: np.ndarray) -> "Positions":
        return Positions(self.barcodes[keep], self.coords[keep], None if self.grid is None else self.grid[keep],
                         self.platform, self.source, self.um_per_px)


def read_positions(source: Any) -> Positions:
    """A positions file (path), an (N, 2) array of (x, y) pixel centres, or a DataFrame with the columns
    a positions table has."""
    import pandas as pd

    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    if isinstance(source, pd.DataFrame):
        return _from_table(source, "positions DataFrame")
    try:
        xy = np.array(source, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"positions must be a file, a DataFrame or an (N, 2) array of (x, y) pixel centres; "
                        f"got {type(source).__name__} that is none of these") from None
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise DataError(f"positions must be a non-empty (N, 2) array of (x, y) pixel centres, got shape {xy.shape}")
    _check_finite(xy, "positions array")
    return Positions(_pixel_ids(xy), xy, None, "array", "positions array")


def _read_file(path: Path) -> Positions:
    if not path.is_file():
        raise DataError(f"positions file {path} does not exist; pass a Space Ranger tissue_positions file or a "
                        f"table of pixel centres")
    first = _first_line(path)
    head = [c.strip().strip('"').lower() for c in first.replace("\t", ",").split(",")]
    named = path.name.lower().endswith(SPACERANGER_SUFFIXES)
    if named or (head[:2] == ["barcode", "in_tissue"]) or _headerless_spaceranger(head):
        return _read_spaceranger(path)
    table = _read_table(path)
    return _from_table(table, str(path))


def _first_line(path: Path) -> str:
    import gzip

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            return fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(one_line(f"cannot read positions file {path} ({type(e).__name__}); expected {EXPECTED}")) from None


def _headerless_spaceranger(head: list[str]) -> bool:
    """A Space Ranger 1.x row: barcode, then five numbers (in_tissue 0/1 first)."""
    if len(head) != 6 or head[1] not in ("0", "1"):
        return False
    try:
        [float(v) for v in head[1:]]
    except ValueError:
        return False
    return True


def _read_spaceranger(path: Path) -> Positions:
    """``in_tissue == 1`` spots of a Space Ranger positions file, read by the Visium reader."""
    from ..data.readers.visium import VisiumReader

    df, fmt = VisiumReader._read_positions(path, f"positions file {path.name}")
    if not df.index.is_unique:
        dups = df.index[df.index.duplicated()].unique()
        raise DataError(one_line(f"positions file {path} names barcode(s) {shown(list(dups), 3)} more than once; "
                                 f"remove the duplicate rows"))
    all_xy = np.column_stack([df["pxl_col_in_fullres"].to_numpy(float), df["pxl_row_in_fullres"].to_numpy(float)])
    _check_finite(all_xy, str(path))
    step, um = PITCH["spaceranger"]
    with _quiet_estimate():  # all positions: more neighbour pairs than the in-tissue spots alone
        um_per_px = _estimate(all_xy, df["array_row"], df["array_col"], step, um)
    keep = df["in_tissue"].to_numpy() == 1
    if not keep.any():
        raise DataError(f"positions file {path} marks no spot in_tissue = 1; check that it is this slide's file")
    tissue = df[keep]
    grid = np.column_stack([tissue["array_col"].to_numpy(np.int64), tissue["array_row"].to_numpy(np.int64)])
    return Positions(tissue.index.to_numpy().astype(str), all_xy[keep], grid, "spaceranger",
                     f"{path.name} ({fmt}, {int(keep.sum())} of {len(df)} spots in tissue)", um_per_px)


def _read_table(path: Path) -> Any:
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    sep = "\t" if name.endswith((".tsv", ".txt")) else "," if name.endswith(".csv") else None
    try:
        return pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", compression="infer")
    except Exception as e:  # noqa: BLE001 - pandas raises many types for malformed text
        raise DataError(one_line(f"cannot parse positions file {path} ({type(e).__name__}: {e}); "
                                 f"expected {EXPECTED}")) from None


def _from_table(table: Any, where: str) -> Positions:
    """A table with ``pixel_x, pixel_y`` (grid ``x, y`` when integer: a legacy ST spot file, rows with
    ``selected != 1`` dropped) or ``x, y`` pixel centres, and optionally ``barcode``/``id`` and
    ``array_row, array_col``."""
    import pandas as pd

    df = table.rename(columns=lambda c: str(c).strip().lower())
    if "pixel_x" in df.columns and "pixel_y" in df.columns:
        cx, cy = "pixel_x", "pixel_y"
    elif "x" in df.columns and "y" in df.columns:
        cx, cy = "x", "y"
    else:
        raise DataError(one_line(f"cannot parse {where}: no pixel_x,pixel_y or x,y columns (found "
                                 f"{shown(list(map(str, df.columns)), 8)}); expected {EXPECTED}"))
    if "selected" in df.columns:
        selected = pd.to_numeric(df["selected"], errors="coerce")
        dropped = int((selected != 1).sum())
        df = df[(selected == 1).to_numpy()]
        if dropped:
            log.info("%s: %d row(s) with selected != 1 dropped", where, dropped)
    if df.empty:
        raise DataError(f"{where} holds no spots; expected {EXPECTED}")
    xy = np.column_stack([_numeric(df, cx, where), _numeric(df, cy, where)])
    grid, platform = _table_grid(df, cx, where)
    ids = _table_ids(df, xy, grid, platform, where)
    um_per_px = None
    if platform in PITCH:
        step, um = PITCH[platform]
        with _quiet_estimate():
            um_per_px = _estimate(xy, grid[:, 1], grid[:, 0], step, um)
    return Positions(ids, xy, grid, platform, where, um_per_px)


def _table_grid(df: Any, cx: str, where: str) -> tuple[np.ndarray | None, str]:
    """(x, y) grid and platform: ``x, y`` beside ``pixel_x, pixel_y`` (legacy ST), else ``array_col,
    array_row`` (a grid of unknown pitch), else none."""
    if cx == "pixel_x" and "x" in df.columns and "y" in df.columns:
        gx, gy = _numeric(df, "x", where), _numeric(df, "y", where)
        if np.allclose(gx, np.round(gx), atol=1e-6) and np.allclose(gy, np.round(gy), atol=1e-6):
            return np.column_stack([np.round(gx), np.round(gy)]).astype(np.int64), "st"
    if "array_row" in df.columns and "array_col" in df.columns:
        col, row = _numeric(df, "array_col", where), _numeric(df, "array_row", where)
        if np.allclose(col, np.round(col)) and np.allclose(row, np.round(row)):
            return np.column_stack([np.round(col), np.round(row)]).astype(np.int64), "table"
    return None, "table"


def _table_ids(df: Any, xy: np.ndarray, grid: np.ndarray | None, platform: str, where: str) -> np.ndarray:
    column = next((c for c in ("barcode", "id") if c in df.columns), None)
    if column is not None:
        ids = df[column].astype(str).str.strip().to_numpy()
    elif platform == "st":
        ids = np.asarray([f"{x}x{y}" for x, y in grid], dtype=str)
    else:
        ids = _pixel_ids(xy)
    ids = np.asarray(ids, dtype=str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(one_line(f"{where} names spot(s) {shown(list(uniq[counts > 1]), 3)} more than once; "
                                 f"remove the duplicate rows"))
    return ids


def _pixel_ids(xy: np.ndarray) -> np.ndarray:
    r = np.floor(xy + 0.5).astype(np.int64)
    return np.asarray([f"x{x}_y{y}" for x, y in r], dtype=str)


def _numeric(df: Any, column: str, where: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(one_line(f"cannot parse {where}: column {column} has {int((~np.isfinite(values)).sum())} "
                                 f"missing or non-numeric value(s); expected {EXPECTED}"))
    return values


def _check_finite(xy: np.ndarray, where: str) -> None:
    if not np.isfinite(xy).all():
        raise DataError(f"{where}: {int((~np.isfinite(xy).all(axis=1)).sum())} spot(s) have missing or infinite "
                        f"pixel coordinates; fix or remove them")


def _estimate(xy: np.ndarray, rows: Any, cols: Any, col_step: int, um_per_step: float) -> float | None:
    from ..data.readers.geometry import estimate_pixel_size

    return estimate_pixel_size(xy, rows, cols, col_step=col_step, um_per_step=um_per_step)


@contextlib.contextmanager
def _quiet_estimate() -> Iterator[None]:
    """The readers' pixel-size warnings name reader params; predict states its own rule instead."""
    logger = logging.getLogger("stbench")

    def drop(record: logging.LogRecord) -> bool:
        return "pixel size" not in record.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
