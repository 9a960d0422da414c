"""Statistics for comparing models on the same split: paired tests and confidence intervals over genes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class PairedTest:
    statistic: float
    p_value: float
    n: int
    median_difference: float


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Wilcoxon signed-rank test of per-gene values ``a`` vs ``b`` (same genes, same order).

    Genes where either value is NaN are dropped; zero differences are dropped (scipy's default
    ``zero_method='wilcox'``); two-sided. Returns NaN statistics when fewer than one pair remains.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"paired test needs two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    if not np.any(d != 0):
        return PairedTest(float("nan"), float("nan"), int(keep.sum()), float(np.median(d)) if len(d) else float("nan"))
    res = stats.wilcoxon(a[keep], b[keep])
    return PairedTest(float(res.statistic), float(res.pvalue), int(keep.sum()), float(np.median(d)))


def bootstrap_median_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median over genes (NaN genes excluded),
    with a fixed seed so the same values give the same interval."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, len(v), size=(n_resamples, len(v)))], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)
