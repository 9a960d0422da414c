"""Reader for legacy Spatial Transcriptomics (ST) slides in the her2st layout (Andersson et al. 2021)."""
from __future__ import annotations

import gzip
import logging
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .base import SlideReader
from .build import build_slide, n_zero_count_spots, spot_obs, um_per_px_text, unique_gene_symbols
from .checks import check_in_image, match_rate_check
from .files import find_image
from .geometry import estimate_pixel_size, image_size
from .params import MIN_MATCH_RATE, pattern_param, read_params
from .text import one_line

log = logging.getLogger("stbench")

SPOT_ID = re.compile(r"^\s*(-?\d+)x(-?\d+)\s*$")
SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
LAYOUT = "ST-cnts/<S>.tsv.gz, ST-spotfiles/<S>_selection.tsv and ST-imgs/<P>/<S>/<image>.jpg"

PARAMS = {
    "image": "image file name or glob in ST-imgs/<P>/<S>/ (default: the single image there)",
    "pixel_size_um": "um per image pixel (default: estimated from the 200 um spot pitch)",
    "min_match_rate": f"minimum fraction of count rows with a spot-file row (default {MIN_MATCH_RATE})",
    "check_bounds": "fail when spot centres lie outside the image (default true)",
}


class STLegacyReader(SlideReader):
    """Legacy ST in the her2st layout (the ``data/`` folder of github.com/almaan/her2st).

    Under ``folder`` (or ``folder/data`` when only that holds ``ST-cnts``), slide ``S`` of patient ``P``:

    - ``ST-cnts/<S>.tsv.gz`` (or ``.tsv``): spots x genes, tab-separated, first header cell empty, rows
      named ``"{x}x{y}"`` (array grid x, y); raw counts. ``.tsv.gz`` wins when both exist.
    - ``ST-spotfiles/<S>_selection.tsv`` (or ``.tsv.gz``): columns ``x y new_x new_y pixel_x pixel_y
      selected``; ``pixel_x`` is the image column. Rows with ``selected != 1`` are dropped.
    - ``ST-imgs/<P>/<S>/``: exactly one image (JPEG in her2st); ``P`` is the ``patient`` argument or the
      first letter of the slide id (any single ``ST-imgs/*/<S>/`` folder is accepted too).

    Count rows are inner-joined to spot-file rows on rounded ``(x, y)``; count rows without a spot row are
    logged and, below ``min_match_rate``, fail the read. Result: barcodes ``"{x}x{y}"``, ``array_col = x``,
    ``array_row = y``, ``obsm['spatial'] = (pixel_x, pixel_y)``, ``image_scale = 1``, ``patient`` = the
    ``patient`` argument or the slide id's first letter. Duplicated gene symbols are made unique
    (``SYMBOL-1``) with a warning; zero-count spots are kept (``uns['stbench']['n_zero_count_spots']``).

    Params: ``image``, ``pixel_size_um`` (else estimated: neighbours one ``x`` apart on the same ``y`` are
    200 um apart; about 0.69 um/px for her2st B-H, 0.92 for A), ``min_match_rate`` (0.9), ``check_bounds``
    (true: spot centres must lie inside the image).
    """

    name: ClassVar[str] = "st-legacy"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "legacy Spatial Transcriptomics, her2st layout (ST-cnts, ST-spotfiles, ST-imgs)"

    def read_slide(self, folder: Path, slide: str, *, patient: str | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        folder = Path(folder)
        where = self.where(slide, folder)
        opts = read_params(params, PARAMS, where)
        if not (folder / "ST-cnts").is_dir() and (folder / "data" / "ST-cnts").is_dir():
            folder = folder / "data"
        cnt_path = self._pick(folder / "ST-cnts", [f"{slide}.tsv.gz", f"{slide}.tsv"], "count file", where)
        spot_path = self._pick(folder / "ST-spotfiles", [f"{slide}_selection.tsv", f"{slide}_selection.tsv.gz"],
                               "spot file", where)
        image = self._find_image(folder, slide, patient, opts.values, where)
        genes, spot_ids, X = self._read_counts(cnt_path, where)
        spots = self._read_spots(spot_path, where)
        joined, X = self._join(spot_ids, X, spots, cnt_path, spot_path, opts.min_match_rate, where)
        xy = joined[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        if opts.check_bounds:
            check_in_image(xy, 1.0, image_size(image, where), image, where)
        pixel_size = opts.pixel_size_um
        if pixel_size is None:
            pixel_size = estimate_pixel_size(spots[["pixel_x", "pixel_y"]].to_numpy(float), spots["y"], spots["x"],
                                             col_step=1, um_per_step=200.0, where=where)
        n_zero = n_zero_count_spots(X)
        if n_zero:
            log.info("%s: %d spot(s) have no counts; kept (preprocessing drops them)", where, n_zero)
        obs = spot_obs([f"{x}x{y}" for x, y in zip(joined["x"], joined["y"])], joined["y"], joined["x"], slide,
                       patient or slide[:1])
        return build_slide(
            self, X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)), spatial=xy, image=image, image_scale=1.0,
            pixel_size_um=pixel_size, source_files=[str(cnt_path), str(spot_path)], where=where,
            counts_file=cnt_path, summary=f"from {cnt_path.name} and {spot_path.name}; image {image.name}; "
                                          f"{um_per_px_text(pixel_size)} um/px")

    @staticmethod
    def _join(spot_ids: Any, X: Any, spots: Any, cnt_path: Path, spot_path: Path, min_rate: float, where: str):
        """Parse the ``"{x}x{y}"`` row names and inner-join count rows to spot-file rows on (x, y): the joined
        spot rows (in count-file order) and the matching rows of ``X``."""
        import pandas as pd

        parsed = spot_ids.str.extract(SPOT_ID)
        bad = parsed[0].isna().to_numpy()
        if bad.any():
            raise DataError(one_line(
                f"{where}: {int(bad.sum())} row name(s) of {cnt_path} are not of the form '{{x}}x{{y}}' (e.g. "
                f"{', '.join(map(repr, spot_ids[bad][:3]))}); is this a her2st ST-cnts file?"))
        cx = parsed[0].astype(np.int64).to_numpy()
        cy = parsed[1].astype(np.int64).to_numpy()
        if pd.Index(list(zip(cx, cy))).duplicated().any():
            raise DataError(one_line(f"{where}: {cnt_path} names some spots twice; remove the duplicate rows"))
        key_counts = pd.DataFrame({"x": cx, "y": cy, "row": np.arange(len(cx))})
        joined = key_counts.merge(spots, on=["x", "y"], how="inner").sort_values("row")
        matched = joined["row"].to_numpy()
        unmatched = np.setdiff1d(np.arange(len(cx)), matched)
        spot_keys = set(zip(spots["x"], spots["y"]))
        match_rate_check(len(matched), len(cx), len(spots), where, min_rate=min_rate,
                         counts_only=[spot_ids.iloc[i] for i in unmatched[:5]],
                         positions_only=[f"{x}x{y}" for x, y in sorted(spot_keys - set(zip(cx, cy)))[:5]],
                         counts_label=f"count file {cnt_path.name}",
                         positions_label=f"selected rows of {spot_path.name}")
        return joined, X[matched]

    # ------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _pick(directory: Path, names: list[str], what: str, where: str) -> Path:
        for name in names:
            if (directory / name).is_file():
                return directory / name
        raise DataError(one_line(f"{where}: {what} {directory / names[0]} (or {names[1]}) does not exist; "
                                 f"expected the her2st layout {LAYOUT} under the data folder"))

    @staticmethod
    def _find_image(folder: Path, slide: str, patient: str | None, params: dict[str, Any], where: str) -> Path:
        root = folder / "ST-imgs"
        tried = [root / p / slide for p in dict.fromkeys([patient, slide[:1]]) if p]
        img_dir = next((d for d in tried if d.is_dir()), None)
        if img_dir is None:
            others = sorted(d for d in root.glob(f"*/{slide}") if d.is_dir()) if root.is_dir() else []
            if len(others) != 1:
                raise DataError(one_line(f"{where}: image folder {tried[0]} does not exist; expected the her2st "
                                         f"layout {LAYOUT} (P = patient, default the slide id's first letter)"))
            img_dir = others[0]
        return find_image([img_dir], where, pattern=pattern_param(params, "image", where), exclude=(".*",),
                          none=f"{where}: no image (*.jpg, *.png, *.tif) in {img_dir}; put the slide's H&E image there",
                          several=f"{where}: several images in {img_dir} ({{names}}); keep one or set params image")

    @staticmethod
    def _read_counts(path: Path, where: str):
        """(gene symbols, spot ids as a pandas Series, counts as CSR float32) from a spots x genes TSV.

        Fast path: the numeric body is parsed in one call (``np.fromstring``), about 0.1 s for 190 x 15k;
        anything irregular falls back to ``pandas.read_csv`` (slower, but with precise errors).
        """
        import pandas as pd
        import scipy.sparse as sp

        try:
            raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
            text = raw.decode("utf-8")
        except Exception as e:  # noqa: BLE001 - BadGzipFile, EOFError, zlib.error, UnicodeDecodeError, ...
            raise DataError(one_line(f"{where}: cannot read count file {path} ({type(e).__name__}: {e}); the file "
                                     f"is damaged or not a tab-separated text table, re-download it")) from None
        lines = text.splitlines()
        header = lines[0].split("\t") if lines else []
        ids, bodies = [], []
        for line in lines[1:]:
            if line.strip():
                spot, _, rest = line.partition("\t")
                ids.append(spot.strip())
                bodies.append(rest)
        if not bodies or not header:
            raise DataError(one_line(f"{where}: {path} holds no spots or no genes; re-download it"))
        n_genes = bodies[0].count("\t") + 1
        if len(header) == n_genes + 1:
            header = header[1:]
        elif len(header) != n_genes:
            raise DataError(one_line(f"{where}: {path} has {len(header)} header cells but {n_genes} count columns; "
                                     f"expected an empty first header cell followed by one gene symbol per column"))
        values = _parse_regular(bodies, n_genes)
        if values is None:  # irregular: let pandas find and name the problem
            ids, values = _parse_irregular(text, path, header, n_genes, where)
        if not np.isfinite(values).all():
            raise DataError(one_line(f"{where}: {path} has missing or infinite counts; expected raw counts"))
        genes = unique_gene_symbols(header, f"{where}: {path.name}")
        return genes, pd.Series(ids, dtype=object), sp.csr_matrix(values)

    @staticmethod
    def _read_spots(path: Path, where: str):
        import pandas as pd

        try:
            spots = pd.read_csv(path, sep="\t", compression="infer")
        except Exception as e:  # noqa: BLE001
            raise DataError(one_line(f"{where}: cannot read spot file {path} ({type(e).__name__}: {e}); "
                                     f"re-download it")) from None
        spots.columns = [str(c).strip() for c in spots.columns]
        missing = [c for c in SPOT_COLUMNS if c not in spots.columns]
        if missing:
            raise DataError(one_line(f"{where}: {path} lacks column(s) {', '.join(missing)}; expected a tab-separated "
                                     f"header x y new_x new_y pixel_x pixel_y selected"))
        cols = list(SPOT_COLUMNS) + (["selected"] if "selected" in spots.columns else [])
        spots = spots[cols].apply(pd.to_numeric, errors="coerce")
        if spots[list(SPOT_COLUMNS)].isna().any().any():
            raise DataError(one_line(f"{where}: {path} has non-numeric or missing x, y, pixel_x or pixel_y values; "
                                     f"re-download it"))
        if "selected" in spots:
            n = len(spots)
            spots = spots[spots["selected"] == 1]
            if len(spots) < n:
                log.info("%s: %d of %d rows of %s are not selected; dropped", where, n - len(spots), n, path.name)
        spots = spots.assign(x=np.round(spots["x"]).astype(np.int64), y=np.round(spots["y"]).astype(np.int64))
        dup = spots.duplicated(["x", "y"])
        if dup.any():
            log.warning("%s: %d rows of %s share rounded (x, y) with an earlier row; kept the first", where,
                        int(dup.sum()), path.name)
            spots = spots[~dup]
        return spots[list(SPOT_COLUMNS)].reset_index(drop=True)


def _parse_regular(bodies: list[str], n_genes: int) -> np.ndarray | None:
    """The count rows (tab-separated numbers, ``n_genes`` per row) parsed in one call (``np.fromstring``);
    None when they are not all numbers."""
    if not all(b.count("\t") == n_genes - 1 for b in bodies):
        return None
    joined = "\t".join(bodies)
    for dtype in (np.int64, np.float64):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a partial parse is detected by its size
                parsed = np.fromstring(joined, dtype=dtype, sep="\t")
        except Exception:  # noqa: BLE001
            continue
        if parsed.size == len(bodies) * n_genes:
            return parsed.reshape(len(bodies), n_genes).astype(np.float32)
    return None


def _parse_irregular(text: str, path: Path, header: list[str], n_genes: int,
                     where: str) -> tuple[list[str], np.ndarray]:
    """(spot ids, counts) of a count table that :func:`_parse_regular` could not read, parsed by pandas,
    whose errors name the problem."""
    import io

    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, skiprows=1, index_col=0, dtype={0: str})
    except Exception as e:  # noqa: BLE001
        raise DataError(one_line(f"{where}: cannot parse count file {path} ({type(e).__name__}: {e}); "
                                 f"expected a tab-separated table of raw counts, spots x genes")) from None
    if df.shape[1] != n_genes:
        raise DataError(one_line(f"{where}: rows of {path} have different numbers of fields; re-download the file"))
    non_numeric = [c for c, t in zip(df.columns, df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        gene = header[df.columns.get_loc(non_numeric[0])]
        raise DataError(one_line(f"{where}: {path} has non-numeric counts (gene column {gene!r}); "
                                 f"expected raw counts, spots x genes"))
    return [str(i).strip() for i in df.index], df.to_numpy(dtype=np.float32)
