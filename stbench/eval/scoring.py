"""Score one query slide with every registered metric, and summarise scores over folds."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..metric import Metric
from ..report.results import pack_floats, pack_strings



def score_slide(metrics: Iterable[Metric], true: np.ndarray, pred: np.ndarray, genes: Sequence[str],
                coords: np.ndarray | None = None) -> dict[str, Any]:
    """Per-gene values (packed), per-metric scores and, for metrics with ``top_genes``, their mean over
    the top-k genes by total (``<name>_heg@k``) and by variance (``<name>_hvg@k``) of the truth.
    ``coords`` (the query spots' full-resolution centres) go to spatial metrics."""
    from .metrics import HEG_HVG_K, gene_summary, top_gene_mean

    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    per_gene: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    for m in metrics:
        value = m.compute(true, pred, coords)
        if m.per_gene:
            value = np.asarray(value, dtype=np.float64)
            per_gene[m.name] = pack_floats(value)
            scores[m.name] = gene_summary(value)
        else:
            scores[m.name] = {"value": float(value)}
        if m.top_genes and m.per_gene:
            for by in ("heg", "hvg"):
                for k in HEG_HVG_K:
                    if k <= true.shape[1]:
                        v, n_nan = top_gene_mean(true, value, k, by=by)
                        scores[f"{m.name}_{by}@{k}"] = {"value": float(v), "n_nan": int(n_nan)}
    return {"genes": pack_strings(genes), "per_gene": per_gene, "scores": scores}


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation; NaN for fewer than two values (one fold has no spread to show)."""
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def summarise(folds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean/median over genes (or the value, for per-spot metrics) averaged over
    folds; ``sd`` and ``median_sd`` are standard deviations over folds (NaN for one fold)."""
    names: list[str] = []
    for f in folds:
        names += [n for n in f["scores"] if n not in names]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        recs = [f["scores"].get(name) for f in folds]
        recs = [r for r in recs if r is not None]
        if "mean" in recs[0]:
            means = np.array([np.nan if r["mean"] is None else r["mean"] for r in recs], dtype=float)
            medians = np.array([np.nan if r["median"] is None else r["median"] for r in recs], dtype=float)
            out[name] = {"mean": _mean(means), "median": _mean(medians), "sd": _sd(means),
                         "median_sd": _sd(medians), "n_nan": int(sum(r["n_nan"] for r in recs)),
                         "n_folds": len(recs)}
        else:
            values = np.array([np.nan if r["value"] is None else r["value"] for r in recs], dtype=float)
            out[name] = {"mean": _mean(values), "median": None, "sd": _sd(values), "n_folds": len(recs)}
    return out
