"""Reader for 10x Visium Space Ranger output (1.x and 2.x layouts, h5 or mtx counts, GEO file names)."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .base import SlideReader
from .build import build_slide, spot_obs, um_per_px_text
from .checks import check_in_image, match_rate_check
from .files import IMAGE_PATTERNS, find_by_suffix, find_image, list_files
from .geometry import estimate_pixel_size, image_size
from .params import MIN_MATCH_RATE, choice_param, pattern_param, read_params
from .tenx import open_text, read_10x_h5, read_10x_mtx, read_error
from .text import one_line

log = logging.getLogger("stbench")

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
POSITION_SUFFIXES = ("tissue_positions.csv", "tissue_positions.csv.gz", "tissue_positions_list.csv",
                     "tissue_positions_list.csv.gz", "tissue_positions_list.txt", "tissue_positions_list.txt.gz")
H5_SUFFIXES = ("filtered_feature_bc_matrix.h5",)
MTX_SUFFIXES = ("matrix.mtx", "matrix.mtx.gz")
BARCODE_SUFFIXES = ("barcodes.tsv", "barcodes.tsv.gz")
FEATURE_SUFFIXES = ("features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz")
SCALEFACTOR_SUFFIXES = ("scalefactors_json.json", "scalefactors_json.json.gz")
HIRES_SUFFIXES = ("tissue_hires_image.png",)
# Space Ranger's own downsampled / QC images: never the full-resolution H&E.
NOT_FULLRES = ("*tissue_*_image.png", "*aligned_fiducials.jpg", "*detected_tissue_image.jpg",
               "*aligned_tissue_image.jpg", "*cytassist_image.tif*", "*spot_*.png")
LAYOUTS = ("per-slide", "flat")

PARAMS = {
    "layout": '"per-slide" (default: folder/<slide>/) or "flat" (folder itself)',
    "image": "full-resolution image: file name or glob in the slide folder ({slide} = slide id), or an absolute path",
    "pixel_size_um": "um per full-resolution pixel (default: estimated from the spot pitch)",
    "min_match_rate": f"minimum fraction of count barcodes with a position (default {MIN_MATCH_RATE})",
    "check_bounds": "fail when spot centres lie outside the image (default true)",
}


class VisiumReader(SlideReader):
    """10x Visium: a Space Ranger output folder per slide (1.x or 2.x), optionally with GEO-style names.

    **Layout.** By default (``layout = "per-slide"``) slide ``S`` lives in ``folder/S/``; when that folder
    holds an ``outs/`` folder (a raw ``spaceranger count`` run), ``outs/`` is used. With
    ``layout = "flat"`` the files lie in ``folder`` itself; several slides may then share it when their
    file names contain the slide id (e.g. GEO's ``GSM7697868_C73A1_matrix.mtx.gz`` for slide ``C73A1``):
    whenever a suffix matches several files, only names containing the slide id are kept.

    Files are matched by name suffix (so GEO prefixes and ``.gz`` work), in the slide folder, its
    ``spatial/`` and its ``filtered_feature_bc_matrix/`` folders; each must match exactly once:

    - positions: ``*tissue_positions.csv`` (Space Ranger 2.x, header) or ``*tissue_positions_list.csv``/
      ``.txt`` (1.x, no header), optionally ``.gz``. The header is sniffed (first field ``barcode``).
      Columns are taken in the TRUE 10x order ``barcode, in_tissue, array_row, array_col,
      pxl_row_in_fullres, pxl_col_in_fullres``, so ``x = pxl_col_in_fullres`` and
      ``y = pxl_row_in_fullres``. Only ``in_tissue == 1`` spots are kept.
    - counts: ``*filtered_feature_bc_matrix.h5`` (read with ``scanpy.read_10x_h5``; gene symbols become
      var names, Gene Expression features only), else ``*matrix.mtx(.gz)`` with ``*barcodes.tsv(.gz)``
      and ``*features.tsv(.gz)`` (or ``genes.tsv``) from ``filtered_feature_bc_matrix/`` or the slide
      folder. Unfiltered matrices are fine: off-tissue barcodes are dropped. Count barcodes absent from
      the positions are counted and logged; below ``min_match_rate`` the read fails.
    - image: params ``image`` (a name or glob relative to the slide folder, or an absolute path; ``{slide}``
      is replaced by the slide id), else the single ``*.tif/*.tiff/*.btf/*.jpg/*.jpeg/*.png`` in the slide
      folder that is not a Space Ranger image (``tissue_*_image.png`` etc.); ``image_scale = 1``. Without
      one, ``spatial/tissue_hires_image.png`` is used with ``image_scale = tissue_hires_scalef`` from
      ``scalefactors_json.json`` and a UserWarning (patches are then cut from the downsampled image).

    Params: ``layout``, ``image``, ``pixel_size_um`` (else estimated from the spot pitch: neighbours on
    the same ``array_row`` two ``array_col`` apart are 100 um apart), ``min_match_rate`` (0.9),
    ``check_bounds`` (true: spot centres must lie inside the image).
    """

    name: ClassVar[str] = "visium"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "10x Visium Space Ranger 1.x/2.x output (h5 or mtx counts, GEO file names)"

    def read_slide(self, folder: Path, slide: str, *, patient: str | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        folder = Path(folder)
        where0 = self.where(slide)  # until the slide folder is known
        opts = read_params(params, PARAMS, where0)
        layout = choice_param(opts.values, "layout", LAYOUTS, where0)
        slide_dir, extra_image_dirs = self._slide_dir(folder, slide, layout, where0)
        where = self.where(slide, slide_dir)
        name_filter = slide if layout == "flat" else None
        spatial_dir = slide_dir / "spatial"
        pos_path = find_by_suffix(
            [spatial_dir, slide_dir], POSITION_SUFFIXES, what="spot positions file", where=where,
            name_filter=name_filter,
            expected="spatial/tissue_positions.csv (Space Ranger 2.x) or spatial/tissue_positions_list.csv (1.x) "
                     "of a Space Ranger output folder (names may carry a GEO prefix and .gz)")
        positions, fmt = self._read_positions(pos_path, where)
        counts, count_files = self._read_counts(slide_dir, where, name_filter)
        source_files = [str(pos_path), *map(str, count_files)]
        barcodes, in_tissue = self._join(positions, counts, pos_path, count_files, opts.min_match_rate, where)
        counts = counts[barcodes].copy()
        pos = positions.loc[barcodes]
        xy = np.column_stack([pos["pxl_col_in_fullres"].to_numpy(float), pos["pxl_row_in_fullres"].to_numpy(float)])

        image, scale, sf_path = self._find_image(slide, slide_dir, extra_image_dirs, spatial_dir, opts.values, where,
                                                 name_filter)
        if sf_path is not None:
            source_files.append(str(sf_path))
        if opts.check_bounds:
            check_in_image(xy, scale, image_size(image, where), image, where)
        pixel_size = opts.pixel_size_um
        if pixel_size is None:  # all positions: more neighbour pairs than the in-tissue spots alone
            pixel_size = estimate_pixel_size(
                np.column_stack([positions["pxl_col_in_fullres"], positions["pxl_row_in_fullres"]]),
                positions["array_row"], positions["array_col"], col_step=2, um_per_step=100.0, where=where)
        return build_slide(
            self, X=counts.X, obs=spot_obs(barcodes.astype(str), pos["array_row"], pos["array_col"], slide,
                                           patient or slide),
            var=counts.var.copy(), spatial=xy, image=image, image_scale=scale, pixel_size_um=pixel_size,
            source_files=source_files, where=where, counts_file=", ".join(map(str, count_files)),
            extra_uns={"positions_format": fmt, "n_spots_in_tissue": int(len(in_tissue))},
            summary=f"(positions {pos_path.name}, {fmt}; image {image.name}, scale {scale:.6g}; "
                    f"{um_per_px_text(pixel_size)} um/px)")

    @staticmethod
    def _join(positions: Any, counts: Any, pos_path: Path, count_files: list[Path], min_rate: float, where: str):
        """(Barcodes of the count spots that are in tissue and have a position, barcodes of all in-tissue
        positions). Off-tissue count barcodes are dropped; the match rate is checked."""
        if not positions.index.is_unique:
            dups = positions.index[positions.index.duplicated()].unique()
            raise DataError(one_line(f"{where}: barcode(s) {', '.join(map(str, dups[:3]))} appear more than once "
                                     f"in {pos_path}; remove the duplicate rows"))
        in_tissue = positions.index[positions["in_tissue"].to_numpy() == 1]
        off_tissue = positions.index[positions["in_tissue"].to_numpy() != 1]
        bc = counts.obs_names
        if not bc.is_unique:
            dups = bc[bc.duplicated()].unique()
            raise DataError(one_line(f"{where}: barcode(s) {', '.join(map(str, dups[:3]))} appear more than once in "
                                     f"{count_files[1] if len(count_files) > 1 else count_files[0]}; "
                                     f"re-export the count matrix"))
        is_off = bc.isin(off_tissue)
        candidates = bc[~is_off]
        if is_off.any():
            log.info("%s: dropped %d count barcodes marked in_tissue = 0 in %s", where, int(is_off.sum()),
                     pos_path.name)
        if len(candidates) == 0 and len(bc):
            raise DataError(one_line(f"{where}: all {len(bc)} barcodes of the count matrix are marked in_tissue = 0 "
                                     f"in {pos_path}; check that the positions file belongs to this slide"))
        keep = candidates.isin(in_tissue)
        match_rate_check(int(keep.sum()), len(candidates), len(in_tissue), where,
                         min_rate=min_rate, counts_only=list(candidates[~keep][:5]),
                         positions_only=list(in_tissue[~in_tissue.isin(bc)][:5]),
                         counts_label=f"count matrix {count_files[0].name}", positions_label=pos_path.name)
        return candidates[keep], in_tissue

    # ------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _slide_dir(folder: Path, slide: str, layout: str, where: str) -> tuple[Path, list[Path]]:
        if layout == "flat":
            if not folder.is_dir():
                raise DataError(f"{where}: data folder {folder} does not exist; download the slide files there "
                                f"(layout = \"flat\": all files directly in the folder)")
            return folder, []
        slide_dir = folder / slide
        if not slide_dir.is_dir():
            raise DataError(f"{where}: slide folder {slide_dir} does not exist; put the Space Ranger output of "
                            f"slide '{slide}' there, or set params layout = \"flat\" if the files lie in {folder}")
        if (slide_dir / "outs").is_dir():
            return slide_dir / "outs", [slide_dir]
        return slide_dir, []

    @staticmethod
    def _read_positions(path: Path, where: str):
        import pandas as pd

        try:
            with open_text(path) as fh:
                first = fh.readline()
            header = first.split(",")[0].strip().strip('"').lower() == "barcode"
            df = pd.read_csv(path, header=0 if header else None, dtype=str, compression="infer")
        except Exception as e:  # noqa: BLE001
            raise read_error(path, e, "spot positions file") from None
        if df.shape[1] < 6:
            raise DataError(one_line(f"{where}: {path} has {df.shape[1]} columns, expected 6 "
                                     f"({', '.join(POSITION_COLUMNS)}); is it a Space Ranger positions file?"))
        if header and set(POSITION_COLUMNS) <= set(df.columns):
            df = df[list(POSITION_COLUMNS)]
        else:
            df = df.iloc[:, :6]
            df.columns = list(POSITION_COLUMNS)
        fmt = "spaceranger-2 (header)" if header else "spaceranger-1 (no header)"
        if header != path.name.lower().split(".")[0].endswith("tissue_positions"):
            log.info("%s: %s %s a header row despite its name; read it as %s", where, path.name,
                     "has" if header else "lacks", fmt)
        df["barcode"] = df["barcode"].str.strip()
        out = df.set_index("barcode")
        for col in POSITION_COLUMNS[1:]:
            values = pd.to_numeric(out[col], errors="coerce")
            if values.isna().any():
                bad = out.index[values.isna()][:3]
                raise DataError(one_line(
                    f"{where}: column {col} of {path} has non-numeric values (barcodes {', '.join(map(str, bad))}); "
                    f"expected columns {', '.join(POSITION_COLUMNS)}"))
            out[col] = values
        for col in POSITION_COLUMNS[1:4]:
            if not np.allclose(out[col], np.round(out[col])):
                raise DataError(one_line(f"{where}: column {col} of {path} is not integer; expected columns "
                                         f"{', '.join(POSITION_COLUMNS)} in this order"))
            out[col] = np.round(out[col]).astype(np.int64)
        if not out["in_tissue"].isin([0, 1]).all():
            raise DataError(one_line(f"{where}: column in_tissue (2nd) of {path} holds values other than 0/1; expected "
                                     f"columns {', '.join(POSITION_COLUMNS)} in this order"))
        return out, fmt

    def _read_counts(self, slide_dir: Path, where: str, name_filter: str | None):
        mtx_dir = slide_dir / "filtered_feature_bc_matrix"
        h5 = find_by_suffix([slide_dir], H5_SUFFIXES, what="count matrix (h5)", where=where, required=False,
                            name_filter=name_filter)
        if h5 is not None:
            return read_10x_h5(h5, where), [h5]
        mtx = find_by_suffix([mtx_dir, slide_dir], MTX_SUFFIXES, what="count matrix", required=False, where=where,
                             name_filter=name_filter)
        if mtx is None:
            raise DataError(one_line(
                f"{where}: no count matrix found; expected {slide_dir / 'filtered_feature_bc_matrix.h5'} or "
                f"{mtx_dir}/matrix.mtx(.gz) with barcodes.tsv(.gz) and features.tsv(.gz) (GEO prefixes allowed)"))
        bc = find_by_suffix([mtx.parent], BARCODE_SUFFIXES, what="barcodes file", where=where,
                            name_filter=name_filter)
        ft = find_by_suffix([mtx.parent], FEATURE_SUFFIXES, what="features file", where=where,
                            name_filter=name_filter)
        return read_10x_mtx(mtx, bc, ft, where), [mtx, bc, ft]

    @classmethod
    def _find_image(cls, slide: str, slide_dir: Path, extra_dirs: list[Path], spatial_dir: Path,
                    params: dict[str, Any], where: str, name_filter: str | None) -> tuple[Path, float, Path | None]:
        """(image, image_scale, scale factors file or None): params image, else the one full-resolution image in
        the slide folder, else the hires image of ``spatial/`` with a warning."""
        pattern = pattern_param(params, "image", where)
        dirs = [slide_dir, *extra_dirs]
        image = find_image(dirs, where, pattern=None if pattern is None else pattern.replace("{slide}", slide),
                           exclude=NOT_FULLRES, name_filter=name_filter, none=None,
                           several=f"{where}: several candidate full-resolution images ({{names}}); "
                                   f"set params image to the one to use")
        if image is not None:
            return image, 1.0, None
        zipped = list_files(dirs, [p + ".gz" for p in IMAGE_PATTERNS], exclude=NOT_FULLRES)
        if zipped:
            raise DataError(one_line(f"{where}: the full-resolution image {zipped[0]} is gzipped; "
                                     f"decompress it (gunzip -k) so that it can be read"))
        return cls._hires_image(slide_dir, spatial_dir, where, name_filter)

    @staticmethod
    def _hires_image(slide_dir: Path, spatial_dir: Path, where: str,
                     name_filter: str | None) -> tuple[Path, float, Path]:
        """Space Ranger's ``tissue_hires_image.png`` and its scale from ``scalefactors_json.json``, with a warning
        that patches will be cut from a downsampled image."""
        hires = find_by_suffix([spatial_dir, slide_dir], HIRES_SUFFIXES, what="hires image", where=where,
                               required=False, name_filter=name_filter)
        if hires is None:
            gz = find_by_suffix([spatial_dir, slide_dir], [s + ".gz" for s in HIRES_SUFFIXES], what="hires image",
                                where=where, required=False, name_filter=name_filter)
            if gz is not None:
                raise DataError(one_line(f"{where}: no full-resolution image, and the hires image {gz} is gzipped; "
                                         f"decompress it (gunzip -k) or put the full-resolution H&E in {slide_dir}"))
            raise DataError(one_line(
                f"{where}: no image found; put the full-resolution H&E (*.tif, *.tiff, *.btf, *.jpg, *.png) in "
                f"{slide_dir} or set params image; spatial/tissue_hires_image.png is missing too"))
        sf = find_by_suffix([spatial_dir, slide_dir], SCALEFACTOR_SUFFIXES, what="scale factors file",
                            where=f"{where} (needed to use {hires.name})", name_filter=name_filter)
        try:
            with open_text(sf) as fh:
                factors = json.load(fh)
            scale = factors["tissue_hires_scalef"]
        except KeyError:
            raise DataError(one_line(f"{where}: {sf} has no tissue_hires_scalef; re-export the Space Ranger "
                                     f"spatial/ folder")) from None
        except Exception as e:  # noqa: BLE001
            raise read_error(sf, e, "scale factors file") from None
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise DataError(one_line(f"{where}: tissue_hires_scalef in {sf} is {scale!r}, expected a number in (0, 1]"))
        warnings.warn(one_line(  # stacklevel: the caller of read_slide
            f"{where}: no full-resolution image in {slide_dir}; patches will be cut from the downsampled "
            f"{hires.name} (scale {scale:g}); put the full-resolution H&E there or set params image"),
            UserWarning, stacklevel=4)
        return hires, float(scale), sf
