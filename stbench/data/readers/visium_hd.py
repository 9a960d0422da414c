"""Reader for 10x Visium HD output (Space Ranger 3): one bin size of ``binned_outputs/`` per catalogue entry.

An 8 um slide has some 300k-700k bins and a 2 um one millions: the positions are read with pyarrow
(only the in-tissue rows become pandas/NumPy objects), the counts stay a sparse CSR matrix throughout.

**Patch size and pixel size follow the bin size.** A bin is a square of ``bin_um`` micrometres, so a
catalogue entry for HD should set ``patch_px`` (and, to override the scale factors, ``pixel_size_um``) so
that a patch covers about one bin (or a chosen multiple for context): ``patch_px * um/px ~ bin_um``, e.g.
16 um bins with 32 px patches at 0.5 um/px, 8 um bins with 16 px patches at 0.5 um/px. The reader records
``bin_size_um`` in ``uns['stbench']``.
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .base import SlideReader
from .build import build_slide, spot_obs, um_per_px_text
from .checks import check_in_image, match_rate_check
from .files import glob_one
from .geometry import estimate_pixel_size, image_size
from .params import MIN_MATCH_RATE, pattern_param, read_params
from .tenx import read_10x_h5, read_10x_mtx, read_error, read_scalefactors, scale_factor
from .text import one_line, shown

log = logging.getLogger("stbench")

BIN_SIZES = (2, 8, 16)
DEFAULT_BIN_UM = 16
POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
#: Bins on one array_row one array_col apart whose distance differs from bin_um by more: a warning.
PITCH_TOLERANCE = 0.05

PARAMS = {
    "bin_um": f"bin size in um: {', '.join(map(str, BIN_SIZES))} (default {DEFAULT_BIN_UM}): reads "
              f"binned_outputs/square_0XXum/",
    "image": "full-resolution microscope image, relative to the dataset folder (or absolute; '{slide}' = slide id; "
             "a glob must match one file); default: the bin folder's spatial/tissue_hires_image.png, with a warning",
    "pixel_size_um": "um per full-resolution pixel (default: microns_per_pixel of spatial/scalefactors_json.json)",
    "min_match_rate": f"minimum fraction of count barcodes with an in-tissue position (default {MIN_MATCH_RATE})",
    "check_bounds": "fail when bin centres lie outside the image (default true)",
}


class VisiumHDReader(SlideReader):
    """10x Visium HD: the Space Ranger 3 output of slide ``S`` in ``folder/S/`` (or ``folder/S/outs/``).

    Reads ``binned_outputs/square_<bin_um, 3 digits>um/`` (params ``bin_um``: 2, 8 or 16; default 16):

    - ``spatial/tissue_positions.parquet`` (columns ``barcode, in_tissue, array_row, array_col,
      pxl_row_in_fullres, pxl_col_in_fullres``; read with pyarrow): only ``in_tissue == 1`` bins are kept;
      ``x = pxl_col_in_fullres``, ``y = pxl_row_in_fullres``, ``array_row``/``array_col`` as given.
    - ``filtered_feature_bc_matrix.h5`` (10x HDF5; else the ``filtered_feature_bc_matrix/`` MatrixMarket
      folder): CSR counts, gene symbols as var names. Count barcodes marked off tissue are dropped;
      below ``min_match_rate`` of the others having an in-tissue position, the read fails.
    - ``spatial/scalefactors_json.json``: ``microns_per_pixel`` is the pixel size (params ``pixel_size_um``
      overrides it); ``bin_size_um``, when present, must equal ``bin_um``. The bin pitch in pixels is
      checked against it (a warning beyond 5%).
    - image: params ``image`` (relative to ``folder``, ``{slide}`` replaced by the slide id), the
      full-resolution microscope image, ``image_scale = 1``; without it, the bin folder's (else the
      slide's) ``spatial/tissue_hires_image.png`` with ``tissue_hires_scalef`` and a UserWarning.

    ``uns['stbench']`` adds ``bin_size_um``, ``positions_format`` and ``n_spots_in_tissue``. A catalogue entry
    sets ``patch_px`` to about ``bin_um / (um per pixel)`` (see the module doc).
    Params: ``bin_um``, ``image``, ``pixel_size_um``, ``min_match_rate`` (0.9), ``check_bounds`` (true).
    """

    name: ClassVar[str] = "visium-hd"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "10x Visium HD Space Ranger 3 binned output (2, 8 or 16 um bins)"

    def read_slide(self, folder: Path, slide: str, *, patient: str | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        folder = Path(folder)
        where0 = self.where(slide)
        opts = read_params(params, PARAMS, where0)
        bin_um = bin_param(opts.values, where0)
        slide_dir, bin_dir = find_bin_dir(folder, slide, bin_um, where0)
        where = self.where(slide, bin_dir)
        sf_path = bin_dir / "spatial" / "scalefactors_json.json"
        factors = bin_factors(sf_path, bin_um, where)
        pixel_size = opts.pixel_size_um or scale_factor(factors, "microns_per_pixel", sf_path, where)
        pos_path = bin_dir / "spatial" / "tissue_positions.parquet"
        pos = read_positions(pos_path, where)
        counts, count_files = read_counts(bin_dir, where)
        rows, pos_rows = join_bins(pos, counts.obs_names, pos_path, count_files[0], opts.min_match_rate, where)
        X = counts.X if len(rows) == counts.n_obs and np.array_equal(rows, np.arange(len(rows))) else counts.X[rows]
        xy = np.column_stack([pos["pxl_col_in_fullres"][pos_rows], pos["pxl_row_in_fullres"][pos_rows]])
        check_pitch(xy, pos["array_row"][pos_rows], pos["array_col"][pos_rows], bin_um, pixel_size, where)
        image, scale = find_hd_image(folder, slide, slide_dir, bin_dir, opts.values, factors, sf_path, where)
        if opts.check_bounds:
            check_in_image(xy, scale, image_size(image, where), image, where)
        return build_slide(
            self, X=X, obs=spot_obs(np.asarray(counts.obs_names)[rows], pos["array_row"][pos_rows],
                                    pos["array_col"][pos_rows], slide, patient or slide),
            var=counts.var.copy(), spatial=xy, image=image, image_scale=scale, pixel_size_um=pixel_size,
            source_files=[str(pos_path), *map(str, count_files), str(sf_path)], where=where,
            counts_file=", ".join(map(str, count_files)),
            extra_uns={"bin_size_um": float(bin_um), "positions_format": "spaceranger-3 parquet",
                       "n_spots_in_tissue": int(pos["n_in_tissue"])},
            summary=f"({bin_um} um bins; image {image.name}, scale {scale:.6g}; {um_per_px_text(pixel_size)} um/px)")


def bin_param(params: dict[str, Any], where: str) -> int:
    """Params ``bin_um``: 2, 8 or 16 (default 16)."""
    value = params.get("bin_um", DEFAULT_BIN_UM)
    if isinstance(value, bool) or value not in BIN_SIZES:
        raise DataError(f"{where}: reader param bin_um must be one of {', '.join(map(str, BIN_SIZES))} "
                        f"(the bin size in um), got {value!r}")
    return int(value)


def find_bin_dir(folder: Path, slide: str, bin_um: int, where: str) -> tuple[Path, Path]:
    """(The slide's Space Ranger output folder, its ``binned_outputs/square_0XXum`` folder)."""
    slide_dir = folder / slide
    if not slide_dir.is_dir():
        raise DataError(one_line(f"{where}: slide folder {slide_dir} does not exist; put the Space Ranger 3 output "
                                 f"of slide '{slide}' there (its outs/ folder or the folder holding binned_outputs/)"))
    if (slide_dir / "outs").is_dir():
        slide_dir = slide_dir / "outs"
    binned = slide_dir / "binned_outputs"
    if not binned.is_dir():
        raise DataError(one_line(f"{where}: {binned} does not exist; a Visium HD slide folder holds Space Ranger 3's "
                                 f"binned_outputs/square_016um/ etc. (for standard Visium use reader = \"visium\")"))
    bin_dir = binned / f"square_{bin_um:03d}um"
    if not bin_dir.is_dir():
        have = sorted(int(m.group(1)) for p in binned.iterdir()
                      if p.is_dir() and (m := re.fullmatch(r"square_(\d+)um", p.name)))
        fix = (f"this slide has bin sizes {', '.join(f'{b} um' for b in have)}: set params bin_um to one of them"
               if have else f"{binned} holds no square_*um folder; copy them from the Space Ranger output")
        raise DataError(one_line(f"{where}: bin folder {bin_dir} does not exist; {fix}"))
    return slide_dir, bin_dir


def bin_factors(path: Path, bin_um: int, where: str) -> dict[str, Any]:
    """The bin folder's scale factors; their ``bin_size_um``, when present, must be ``bin_um``."""
    if not path.is_file():
        raise DataError(one_line(f"{where}: {path} does not exist; copy the bin folder's spatial/ from the Space "
                                 f"Ranger 3 output (its microns_per_pixel gives the pixel size)"))
    factors = read_scalefactors(path, where)
    if "bin_size_um" in factors:
        size = scale_factor(factors, "bin_size_um", path, where)
        if abs(size - bin_um) > 1e-6:
            raise DataError(one_line(f"{where}: {path} says bin_size_um = {size:g} but it lies in the "
                                     f"square_{bin_um:03d}um folder; put each bin size's spatial/ folder in its own "
                                     f"square_0XXum folder"))
    return factors


def read_positions(path: Path, where: str) -> dict[str, Any]:
    """The in-tissue rows of ``tissue_positions.parquet`` as NumPy arrays (``barcode`` as str objects), plus
    ``n_in_tissue`` and ``table`` (the Arrow table, for looking up off-tissue barcodes)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(one_line(f"{where}: {path} does not exist; expected Space Ranger 3's "
                                 f"spatial/tissue_positions.parquet in the bin folder"))
    try:
        names = pq.read_schema(path).names
        missing = [c for c in POSITION_COLUMNS if c not in names]
        if missing:
            raise DataError(one_line(
                f"{where}: {path} lacks column(s) {', '.join(missing)} (it has {shown(names)}); expected Space "
                f"Ranger 3's tissue_positions.parquet with columns {', '.join(POSITION_COLUMNS)}"))
        table = pq.read_table(path, columns=list(POSITION_COLUMNS))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise read_error(path, e, "positions file (Parquet)") from None
    _check_columns(table, path, where)
    in_tissue = pc.equal(table.column("in_tissue"), 1)
    kept = table.filter(in_tissue)
    out: dict[str, Any] = {"table": table, "n_in_tissue": kept.num_rows,
                           "barcode": kept.column("barcode").to_numpy()}
    for col in POSITION_COLUMNS[2:4]:
        out[col] = kept.column(col).to_numpy().astype(np.int64)
    for col in POSITION_COLUMNS[4:]:
        out[col] = kept.column(col).to_numpy().astype(np.float64)
    return out


def _check_columns(table: Any, path: Path, where: str) -> None:
    """No nulls; integer ``in_tissue`` (0/1), ``array_row``/``array_col``; numeric pixel columns; finite pixels."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    expected = f"expected columns {', '.join(POSITION_COLUMNS)} as Space Ranger 3 writes them"
    for col in POSITION_COLUMNS:
        column = table.column(col)
        kind = column.type
        ok = (pt.is_string(kind) or pt.is_large_string(kind) if col == "barcode" else
              pt.is_integer(kind) if col in POSITION_COLUMNS[1:4] else pt.is_integer(kind) or pt.is_floating(kind))
        if not ok:
            raise DataError(one_line(f"{where}: column {col} of {path} has type {kind}; {expected}"))
        if column.null_count:
            raise DataError(one_line(f"{where}: column {col} of {path} has {column.null_count} empty values; {expected}"))
        if col in POSITION_COLUMNS[4:] and pt.is_floating(kind) and not pc.all(pc.is_finite(column)).as_py():
            raise DataError(one_line(f"{where}: column {col} of {path} holds NaN or infinite values; {expected}"))
    values = pc.unique(table.column("in_tissue")).to_pylist()
    if not set(values) <= {0, 1}:
        raise DataError(one_line(f"{where}: column in_tissue of {path} holds values other than 0/1 "
                                 f"({shown(sorted(values))}); {expected}"))


def read_counts(bin_dir: Path, where: str) -> tuple[Any, list[Path]]:
    """The bin folder's filtered count matrix: the 10x h5, else the MatrixMarket folder."""
    h5 = bin_dir / "filtered_feature_bc_matrix.h5"
    if h5.is_file():
        return read_10x_h5(h5, where), [h5]
    mtx_dir = bin_dir / "filtered_feature_bc_matrix"
    parts = [mtx_dir / f"{name}.gz" for name in ("matrix.mtx", "barcodes.tsv", "features.tsv")]
    if all(p.is_file() for p in parts):
        return read_10x_mtx(*parts, where), parts
    raw = " (raw_feature_bc_matrix.h5 is there: the filtered one is needed)" if (
        bin_dir / "raw_feature_bc_matrix.h5").is_file() else ""
    raise DataError(one_line(f"{where}: no count matrix; expected {h5} or {mtx_dir}/ with matrix.mtx.gz, "
                             f"barcodes.tsv.gz and features.tsv.gz{raw}"))


def join_bins(pos: dict[str, Any], barcodes: Any, pos_path: Path, counts_path: Path, min_rate: float,
              where: str) -> tuple[np.ndarray, np.ndarray]:
    """(Rows of the count matrix to keep, in its order; their rows among the in-tissue positions).
    Count barcodes marked off tissue are dropped; the match rate of the others is checked."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pd.Index(pos["barcode"])
    if not index.is_unique:
        dups = index[index.duplicated()].unique()
        raise DataError(one_line(f"{where}: barcode(s) {shown(list(dups), 3)} appear more than once in "
                                 f"{pos_path}; remove the duplicate rows"))
    bc = pd.Index(np.asarray(barcodes).astype(str))
    if not bc.is_unique:
        dups = bc[bc.duplicated()].unique()
        raise DataError(one_line(f"{where}: barcode(s) {shown(list(dups), 3)} appear more than once in "
                                 f"{counts_path}; re-export the count matrix"))
    at = index.get_indexer(bc)
    unmatched = np.flatnonzero(at < 0)
    off = np.zeros(len(bc), dtype=bool)
    if len(unmatched):
        table = pos["table"]
        off_tissue = table.filter(pc.equal(table.column("in_tissue"), 0)).column("barcode")
        found = pc.is_in(pa.array(bc[unmatched].tolist(), type=pa.string()), value_set=off_tissue.combine_chunks()
                         .cast(pa.string()))
        off[unmatched] = found.to_numpy(zero_copy_only=False)
    if off.all() and len(bc):
        raise DataError(one_line(f"{where}: all {len(bc)} barcodes of {counts_path} are marked in_tissue = 0 in "
                                 f"{pos_path}; check that the positions belong to this slide and bin size"))
    if off.any():
        log.info("%s: dropped %d count barcodes marked in_tissue = 0 in %s", where, int(off.sum()), pos_path.name)
    keep = at >= 0
    match_rate_check(int(keep.sum()), int((~off).sum()), len(index), where, min_rate=min_rate,
                     counts_only=list(bc[~keep & ~off][:5]), positions_only=list(index[~index.isin(bc)][:5]),
                     counts_label=f"count matrix {counts_path.name}", positions_label=pos_path.name)
    rows = np.flatnonzero(keep)
    return rows, at[rows]


def check_pitch(xy: np.ndarray, array_row: np.ndarray, array_col: np.ndarray, bin_um: int, pixel_size: float,
                where: str) -> None:
    """Warn when neighbouring bins (one ``array_col`` apart) are not ``bin_um`` apart at ``pixel_size``."""
    est = estimate_pixel_size(xy, array_row, array_col, col_step=1, um_per_step=float(bin_um), where=where)
    if est is not None and abs(est / pixel_size - 1) > PITCH_TOLERANCE:
        log.warning("%s: neighbouring %d um bins are %.4g um apart at %.4g um/px (the bin pitch gives %.4g um/px); "
                    "check the scale factors or set params pixel_size_um", where, bin_um,
                    bin_um * pixel_size / est, pixel_size, est)


def find_hd_image(folder: Path, slide: str, slide_dir: Path, bin_dir: Path, params: dict[str, Any],
                  factors: dict[str, Any], sf_path: Path, where: str) -> tuple[Path, float]:
    """(image, image_scale): params ``image`` (relative to the dataset folder), else the hires PNG of the bin
    folder's or the slide's ``spatial/`` with ``tissue_hires_scalef`` and a warning."""
    pattern = pattern_param(params, "image", where)
    if pattern is not None:
        return glob_one(folder, pattern.replace("{slide}", slide), what="image", where=where), 1.0
    candidates = [d / "spatial" / "tissue_hires_image.png" for d in (bin_dir, slide_dir)]
    hires = next((p for p in candidates if p.is_file()), None)
    if hires is None:
        raise DataError(one_line(f"{where}: no image; set params image to the full-resolution microscope image "
                                 f"(relative to {folder}, '{{slide}}' = slide id); {candidates[0]} is missing too"))
    scale = scale_factor(factors, "tissue_hires_scalef", sf_path, where, at_most=1.0)
    warnings.warn(one_line(  # stacklevel: the caller of read_slide
        f"{where}: no full-resolution image given; patches will be cut from the downsampled {hires.name} "
        f"(scale {scale:g}); set params image to the microscope image"), UserWarning, stacklevel=4)
    return hires, scale
