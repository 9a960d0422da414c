"""Exports of a run for other tools: the HEtoSGEBench long table (CSV or Parquet), a per-gene
metrics table, and one AnnData (h5ad) per query slide that scanpy and squidpy can plot.

Long-table columns follow HEtoSGEBench (Wang et al. 2025, ``00-CombineDat.Rmd``). Its R pipeline
splits ``patch_id`` at ``_`` into ``img_id`` and ``<x>x<y>`` (overwriting ``img_id``), so by default
``patch_id`` is ``<img_id>_<x>x<y>`` with full-resolution pixel centres; slide ids containing ``_``
break that split on their side. Every exported prediction is of a held-out query slide, so
``pred_type`` is always ``"test"``.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import ResultsError, StbenchError
from .predictions import SlidePredictions, load_predictions, predictions_path
from .results import RunResult, load_result

if TYPE_CHECKING:
    import anndata

LONG_COLUMNS = ["img_id", "model_id", "pred_type", "train_fold", "gene", "exprs", "pred", "patch_id"]
PRED_TYPE = "test"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
FORMATS = ("csv", "csv.gz", "parquet", "h5ad")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._") or "_"


def model_id(result: RunResult) -> str:
    """Stable across reruns of the same configuration: the config hash covers options and folds."""
    return f"{_safe(result.model)}-{result.config_hash[:8]}"


def _fold_index(result: RunResult, fold: str, query: str) -> int | None:
    return next((i for i, f in enumerate(result.folds) if f["fold"] == fold and f["query"] == query), None)


def _per_gene_metrics(result: RunResult, i: int) -> list[str]:
    stored = result.folds[i].get("per_gene", {})
    return [m for m, spec in result.metrics.items() if spec.get("per_gene") and m in stored]


def patch_ids(slide: SlidePredictions) -> np.ndarray:
    xy = np.rint(np.asarray(slide.coords, dtype=np.float64)).astype(np.int64).astype(str)
    return np.char.add(np.char.add(np.char.add(f"{slide.query}_", xy[:, 0]), "x"), xy[:, 1])


def _categorical(parts: Sequence[np.ndarray], expand: Callable[[np.ndarray, int], np.ndarray], counts: Sequence[int]) -> pd.Categorical:
    """One column from per-slide values: slide i's codes go through ``expand(codes, counts[i])``."""
    codes, categories = pd.factorize(np.concatenate(parts))
    split = np.split(codes.astype(np.int32), np.cumsum([len(p) for p in parts])[:-1])
    return pd.Categorical.from_codes(np.concatenate([expand(c, k) for c, k in zip(split, counts)]),
                                     categories=pd.Index(categories, dtype=object))


def _constant(value: str, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(np.zeros(n, np.int8), categories=pd.Index([value], dtype=object))


def long_table(result: RunResult, slides: Sequence[SlidePredictions],
               patch_id: Literal["coords", "barcode"] = "coords") -> pd.DataFrame:
    """One row per (query spot, gene), spot-major in each slide's order. Text columns are
    categorical so that tables of tens of millions of rows stay small.

    ``patch_id="barcode"`` uses spot barcodes instead of ``<img_id>_<x>x<y>``; HEtoSGEBench's R
    pipeline cannot parse those."""
    if patch_id not in ("coords", "barcode"):
        raise StbenchError(f"unknown patch_id style '{patch_id}'; use coords or barcode")
    if not slides:
        return pd.DataFrame({c: pd.Series(dtype=np.float32 if c in ("exprs", "pred") else object) for c in LONG_COLUMNS})
    spots, genes = zip(*(np.shape(s.true) for s in slides))
    rows = [n * g for n, g in zip(spots, genes)]
    patches = [np.asarray(s.barcodes).astype(str) if patch_id == "barcode" else patch_ids(s) for s in slides]
    return pd.DataFrame({
        "img_id": _categorical([np.asarray([s.query], dtype=object) for s in slides], np.repeat, rows),
        "model_id": _constant(model_id(result), sum(rows)),
        "pred_type": _constant(PRED_TYPE, sum(rows)),
        "train_fold": _categorical([np.asarray([s.fold], dtype=object) for s in slides], np.repeat, rows),
        "gene": _categorical([np.asarray(s.genes, dtype=object) for s in slides], np.tile, spots),
        "exprs": np.concatenate([np.asarray(s.true, dtype=np.float32).ravel() for s in slides]),
        "pred": np.concatenate([np.asarray(s.pred, dtype=np.float32).ravel() for s in slides]),
        "patch_id": _categorical([p.astype(object) for p in patches], np.repeat, genes),
    }, columns=LONG_COLUMNS)


def per_gene_table(result: RunResult) -> pd.DataFrame:
    mid = model_id(result)
    frames = []
    for i, fold in enumerate(result.folds):
        genes = result.genes(i)
        frame = pd.DataFrame({"model_id": mid, "train_fold": fold["fold"], "img_id": fold["query"], "gene": genes})
        for m in _per_gene_metrics(result, i):
            frame[m] = result.per_gene(i, m)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["model_id", "train_fold", "img_id", "gene"])
    return pd.concat(frames, ignore_index=True)


def _table_format(path: Path) -> str:
    name = path.name.lower()
    fmt = next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)
    if fmt is None:
        raise StbenchError(f"cannot write table {path}: unknown suffix '{path.suffix or '(none)'}'; "
                           f"use {', '.join(TABLE_SUFFIXES)}")
    return fmt


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = _table_format(path)
    with atomic_path(path) as tmp:
        if fmt == ".parquet":
            df.to_parquet(tmp, engine="pyarrow", index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if fmt == ".csv.gz" else None)
    return path


def _uns_stbench(slide: SlidePredictions, result: RunResult | None) -> dict[str, object]:
    info: dict[str, object] = {"fold": slide.fold, "query": slide.query, "pred_type": PRED_TYPE}
    if result is not None:
        info.update(model=result.model, model_id=model_id(result), dataset=result.dataset, protocol=result.protocol,
                    seed=int(result.seed), config_hash=result.config_hash, label=result.label)
    return info


def spatial_library(hires: np.ndarray | None, hires_scale: float, spot_diameter_fullres: float, *,
                    lowres: np.ndarray | None = None, lowres_scale: float | None = None,
                    metadata: dict[str, object] | None = None) -> dict[str, object]:
    """scanpy/squidpy ``uns['spatial'][library_id]``: ``images`` (``hires``, and ``lowres`` when given),
    ``scalefactors`` (``tissue_<key>_scalef`` maps full-resolution pixel coordinates onto each image,
    ``spot_diameter_fullres``) and ``metadata``. With no image, plot with ``img_key=None``."""
    images = {} if hires is None else {"hires": np.asarray(hires, dtype=np.uint8)}
    scalefactors = {"tissue_hires_scalef": float(hires_scale), "spot_diameter_fullres": float(spot_diameter_fullres)}
    if lowres is not None:
        images["lowres"] = np.asarray(lowres, dtype=np.uint8)
        scalefactors["tissue_lowres_scalef"] = float(lowres_scale if lowres_scale is not None else hires_scale)
    return {"images": images, "scalefactors": scalefactors,
            "metadata": {"source": "stbench", "coordinates": "full-resolution pixels, x = column, y = row",
                         **(metadata or {})}}


def _spatial(slide: SlidePredictions) -> dict[str, object]:
    return spatial_library(slide.thumbnail, slide.thumbnail_scale, slide.spot_diameter_px)


def to_anndata(slide: SlidePredictions, result: RunResult | None = None) -> "anndata.AnnData":
    """Query spots x genes: X and layer ``true`` hold the truth, layer ``pred`` the prediction."""
    import anndata
    from anndata.utils import make_index_unique

    true = np.asarray(slide.true, dtype=np.float32)
    obs = pd.DataFrame({"slide": slide.query, "fold": slide.fold},
                       index=make_index_unique(pd.Index(np.asarray(slide.barcodes).astype(str), dtype=object)))
    var = pd.DataFrame(index=make_index_unique(pd.Index(list(slide.genes), dtype=object)))
    i = _fold_index(result, slide.fold, slide.query) if result is not None else None
    if i is not None and result.genes(i) == list(slide.genes):
        for m in _per_gene_metrics(result, i):
            var[m] = result.per_gene(i, m)
    return anndata.AnnData(
        X=true.copy(), obs=obs, var=var,
        layers={"true": true, "pred": np.asarray(slide.pred, dtype=np.float32)},
        obsm={"spatial": np.asarray(slide.coords, dtype=np.float64)},
        uns={"spatial": {slide.query: _spatial(slide)}, "stbench": _uns_stbench(slide, result)},
    )


def write_h5ad(adata: "anndata.AnnData", path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    return path


def _check_formats(formats: Sequence[str]) -> list[str]:
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise StbenchError(f"unknown export format {', '.join(repr(f) for f in bad) or '(none given)'}; "
                           f"choose from {', '.join(FORMATS)}")
    return formats


def export_run(results_path: str | os.PathLike, out_dir: str | os.PathLike,
               formats: Sequence[str] = ("csv", "h5ad")) -> list[Path]:
    """Write ``<model_id>.long.<fmt>``, ``<model_id>.per_gene.<fmt>`` and ``<model_id>.<query>.h5ad``."""
    formats = _check_formats(formats)
    result = load_result(results_path)
    pred_file = predictions_path(results_path)
    slides, meta = load_predictions(pred_file)
    if meta.get("config_hash", result.config_hash) != result.config_hash:
        raise ResultsError(f"predictions file {pred_file} belongs to config {meta.get('config_hash')}, "
                           f"not {result.config_hash}; rerun the run")
    out, mid = Path(out_dir), model_id(result)
    written: list[Path] = []
    tables = [f for f in formats if f != "h5ad"]
    if tables:
        long, per_gene = long_table(result, slides), per_gene_table(result)
        for fmt in tables:
            written += [write_table(long, out / f"{mid}.long.{fmt}"), write_table(per_gene, out / f"{mid}.per_gene.{fmt}")]
    if "h5ad" in formats:
        names = _slide_names(slides)
        written += [write_h5ad(to_anndata(s, result), out / f"{mid}.{name}.h5ad") for s, name in zip(slides, names)]
    return written


def _slide_names(slides: Sequence[SlidePredictions]) -> list[str]:
    """The query id, or fold and query where a slide is the query of more than one fold."""
    times = Counter(s.query for s in slides)
    return [_safe(s.query if times[s.query] == 1 else f"{s.fold}.{s.query}") for s in slides]
