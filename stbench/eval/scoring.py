"""Score one query slide with every registered metric, and summarise scores over folds."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..metric import Metric
from ..report.results import pack_floats, pack_strings



#: Genes (per-gene metrics) or spots (spot-mean metrics) scored at once: bounds the float64 copies the
#: metric functions make to GENE_BLOCK x n_spots and SPOT_BLOCK x n_genes values.
GENE_BLOCK = 256
SPOT_BLOCK = 4096


def score_slide(metrics: Iterable[Metric], true: np.ndarray, pred: np.ndarray, genes: Sequence[str],
                coords: np.ndarray | None = None) -> dict[str, Any]:
    """Per-gene values (packed), per-metric scores and, for metrics with ``top_genes``, their mean over
    the top-k genes by total (``<name>_heg@k``) and by variance (``<name>_hvg@k``) of the truth.
    ``coords`` (the query spots' full-resolution centres) go to spatial metrics. Per-gene metrics run
    on blocks of genes and spot-mean metrics on blocks of spots, so memory stays bounded on large
    slides; the values are those of scoring the whole matrices at once."""
    from .metrics import HEG_HVG_K, gene_summary, top_mean_by_score

    per_gene: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    ranking: dict[str, np.ndarray] | None = None
    for m in metrics:
        if m.per_gene:
            value = _by_genes(m, true, pred, coords)
            per_gene[m.name] = pack_floats(value)
            scores[m.name] = gene_summary(value)
        else:
            scores[m.name] = {"value": _by_spots(m, true, pred, coords) if m.spot_mean
                              else float(m.compute(true, pred, coords))}
        if m.top_genes and m.per_gene:
            ranking = ranking if ranking is not None else gene_ranking(true)
            for by in ("heg", "hvg"):
                for k in HEG_HVG_K:
                    if k <= true.shape[1]:
                        v, n_nan = top_mean_by_score(ranking[by], value, k)
                        scores[f"{m.name}_{by}@{k}"] = {"value": float(v), "n_nan": int(n_nan)}
    return {"genes": pack_strings(genes), "per_gene": per_gene, "scores": scores}


def _by_genes(m: Metric, true: np.ndarray, pred: np.ndarray, coords: np.ndarray | None) -> np.ndarray:
    n = true.shape[1]
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, GENE_BLOCK):
        out[s:s + GENE_BLOCK] = np.asarray(m.compute(true[:, s:s + GENE_BLOCK], pred[:, s:s + GENE_BLOCK], coords),
                                           dtype=np.float64)
    return out


def _by_spots(m: Metric, true: np.ndarray, pred: np.ndarray, coords: np.ndarray | None) -> float:
    n = true.shape[0]
    total = 0.0
    for s in range(0, n, SPOT_BLOCK):
        part = slice(s, s + SPOT_BLOCK)
        block = m.compute(true[part], pred[part], None if coords is None else np.asarray(coords)[part])
        total += float(block) * len(true[part])
    return total / n if n else float("nan")


def gene_ranking(true: np.ndarray) -> dict[str, np.ndarray]:
    """Per gene, the column sum (``heg``) and population variance (``hvg``) of the truth, in float64."""
    n = true.shape[1]
    total, var = np.empty(n), np.empty(n)
    for s in range(0, n, GENE_BLOCK):
        block = np.asarray(true[:, s:s + GENE_BLOCK], dtype=np.float64)
        total[s:s + GENE_BLOCK], var[s:s + GENE_BLOCK] = block.sum(axis=0), block.var(axis=0)
    return {"heg": total, "hvg": var}


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
