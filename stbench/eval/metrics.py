"""Built-in metrics comparing true and predicted expression (see the metrics spec).

``true`` and ``pred`` are float arrays of shape (n_spots, n_genes) with the same genes in the same
order. Everything is computed in float64 and vectorised over genes; the per-gene values equal the
paper's per-gene pandas loop (SpatialBenchmarking's ``GenesMetrics``) to 1e-9.

Per-gene metrics (``rmse``, ``ssim``, ``pearson``) return one value per gene, NaN where undefined
(constant or all-zero columns); summarise them with :func:`gene_summary`, which excludes NaN genes
and reports how many were excluded. Inputs containing NaN propagate NaN; inputs with inf, arrays
that are not 2-D, or mismatched shapes raise :class:`~stbench.errors.DataError`.

Note on RMSE: both columns are z-scored first, so RMSE_g = sqrt(2 - 2 r_g) with r_g the gene's
Pearson r. RMSE 1.41 means r = 0; RMSE 0 means r = 1 and RMSE 2 means r = -1.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from stbench.errors import DataError, OptionError
from stbench.metric import Metric

__all__ = [
    "rmse",
    "ssim",
    "pearson",
    "hits",
    "hit_at",
    "top_gene_mean",
    "top_gene_pearson",
    "top_mean_by_score",
    "gene_summary",
    "BUILTIN_METRICS",
    "HEG_HVG_K",
]

#: The k of the paper's HEG-k / HVG-k summaries (mean Pearson over the top-k genes).
HEG_HVG_K: tuple[int, ...] = (1, 3, 5, 10, 50, 100)

# SSIM constants (as in the reference code).
_K1 = 0.01
_K2 = 0.03


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_matrix(x: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} is not a numeric array ({exc}); pass a float array") from None
    if arr.ndim != 2:
        raise DataError(
            f"{name} must be 2-D (n_spots, n_genes), got {arr.ndim}-D shape {arr.shape}"
        )
    if np.isinf(arr).any():
        n_inf = int(np.isinf(arr).sum())
        raise DataError(f"{name} contains {n_inf} inf value(s); replace them with finite values before scoring")
    return arr


def _check_pair(true: object, pred: object) -> tuple[np.ndarray, np.ndarray]:
    t = _as_matrix(true, "true")
    p = _as_matrix(pred, "pred")
    if t.shape != p.shape:
        raise DataError(
            f"true and pred differ in shape: {t.shape} vs {p.shape}; "
            "pass the same spots and genes in the same order"
        )
    if t.shape[0] == 0:
        raise DataError("true and pred have no spots (shape (0, n_genes)); nothing to score")
    return t, p


def _constant_columns(x: np.ndarray) -> np.ndarray:
    """Columns whose values are all exactly equal (as scipy's zscore/pearsonr detect them).

    A column holding NaN is not flagged: NaN propagates through the arithmetic instead.
    """
    return x.max(axis=0) == x.min(axis=0)


def _centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - column mean) as a new array, and the column means."""
    mu = x.mean(axis=0)
    return x - mu, mu


def _colsum_prod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column sums of a * b without materialising the product."""
    return np.einsum("ij,ij->j", a, b)


# --------------------------------------------------------------------------------------------
# per-gene metrics
# --------------------------------------------------------------------------------------------
def rmse(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-gene RMSE between z-scored columns (lower is better).

    Each column of ``true`` and of ``pred`` is z-scored separately with the population std
    (ddof=0, as ``scipy.stats.zscore``); RMSE_g = sqrt(mean over spots of (z_true - z_pred)^2).
    A constant column (in either array) gives NaN for that gene. Equals sqrt(2 - 2 r_g).
    """
    t, p = _check_pair(true, pred)
    n = t.shape[0]
    const = _constant_columns(t) | _constant_columns(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        zt, _ = _centred(t)
        zt /= np.sqrt(_colsum_prod(zt, zt) / n)
        zp, _ = _centred(p)
        zp /= np.sqrt(_colsum_prod(zp, zp) / n)
        zt -= zp
        del zp
        out = np.sqrt(_colsum_prod(zt, zt) / n)
    out[const] = np.nan
    return out


def ssim(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-gene global SSIM of max-scaled columns (higher is better, in [-1, 1]).

    Each column of ``true`` and of ``pred`` is divided by its own maximum; M is the smaller of the
    two scaled column maxima; mu and s are the population mean and std, s12 the population
    covariance; C1 = (0.01 M)^2, C2 = (0.03 M)^2, C3 = C2 / 2 and

        SSIM = (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1)
             * (2 s1 s2 + C2) / (s1^2 + s2^2 + C2)
             * (s12 + C3) / (s1 s2 + C3).

    This is one whole-column value per gene, not the windowed image SSIM of scikit-image.
    A column whose maximum is 0 (in ``true`` or ``pred``) gives NaN for that gene.
    """
    t, p = _check_pair(true, pred)
    n = t.shape[0]
    max_t = t.max(axis=0)
    max_p = p.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = t / max_t
        m_t = xs.max(axis=0)
        mu1 = xs.mean(axis=0)
        xs -= mu1
        ys = p / max_p
        m_p = ys.max(axis=0)
        mu2 = ys.mean(axis=0)
        ys -= mu2
        var1 = _colsum_prod(xs, xs) / n
        var2 = _colsum_prod(ys, ys) / n
        cov = _colsum_prod(xs, ys) / n
        del xs, ys
        s1 = np.sqrt(var1)
        s2 = np.sqrt(var2)
        m = np.minimum(m_t, m_p)
        c1 = (_K1 * m) ** 2
        c2 = (_K2 * m) ** 2
        c3 = c2 / 2
        lum = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
        con = (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2)
        struct = (cov + c3) / (s1 * s2 + c3)
        out = lum * con * struct
    out[(max_t == 0) | (max_p == 0)] = np.nan
    return out


def pearson(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-gene Pearson r between ``true[:, g]`` and ``pred[:, g]`` (higher is better).

    Matches ``scipy.stats.pearsonr`` per gene; a constant column (in either array) gives NaN.
    """
    t, p = _check_pair(true, pred)
    const = _constant_columns(t) | _constant_columns(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc, _ = _centred(t)
        yc, _ = _centred(p)
        sxy = _colsum_prod(xc, yc)
        sxx = _colsum_prod(xc, xc)
        syy = _colsum_prod(yc, yc)
        del xc, yc
        r = sxy / (np.sqrt(sxx) * np.sqrt(syy))
    np.clip(r, -1.0, 1.0, out=r)  # as scipy does: rounding can push |r| a hair above 1
    r[const] = np.nan
    return r


# --------------------------------------------------------------------------------------------
# per-spot metric
# --------------------------------------------------------------------------------------------
def _check_t(t: object, n_genes: int) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise OptionError(f"t must be an integer, got {t!r}")
    if not 1 <= int(t) <= n_genes:
        raise OptionError(f"t must be between 1 and the number of genes ({n_genes}), got {t}")
    return int(t)


def _top_t_mask(x: np.ndarray, t: int) -> np.ndarray:
    """Boolean (n_spots, n_genes) mask of each spot's t top genes under the documented order.

    Order: value descending, then gene index ascending; NaN values rank after every number.
    This is exactly the first t entries of ``np.argsort(-x, axis=1, kind="stable")``, found in
    O(n_genes) per spot with a partition instead of a full sort.
    """
    key = -x  # ascending key; inputs hold no inf, so +inf is free to stand for NaN
    key[np.isnan(key)] = np.inf
    kth = np.partition(key, t - 1, axis=1)[:, t - 1 : t].copy()  # t-th smallest key per spot
    mask = key < kth
    tie = key == kth
    del key
    need = t - mask.sum(axis=1)  # how many of the tied genes still fit, >= 1
    n_tie = tie.sum(axis=1)
    over = np.flatnonzero(n_tie > need)  # spots where the tie rule decides: lowest indices win
    if over.size:
        sub = tie[over]
        sub &= np.cumsum(sub, axis=1, dtype=np.int32) <= need[over, None]
        tie[over] = sub
    mask |= tie
    return mask


def hits(true: np.ndarray, pred: np.ndarray, t: int) -> np.ndarray:
    """Per spot: does the set of the t top predicted genes meet the set of the t top true genes?

    Tie rule: genes are ordered by value descending, then by gene index ascending (the order of a
    stable ``argsort`` of the negated values), so among tied values the lower gene index wins.
    NaN values rank after every number.
    """
    tr, pr = _check_pair(true, pred)
    t = _check_t(t, tr.shape[1])
    return (_top_t_mask(tr, t) & _top_t_mask(pr, t)).any(axis=1)


def hit_at(true: np.ndarray, pred: np.ndarray, t: int) -> float:
    """Hit@t: fraction of spots whose t top predicted genes include one of its t top true genes.

    Per spot, P = indices of the t largest predicted genes and R = indices of the t largest true
    genes; the spot is a hit if P and R intersect. Tie rule: order by value descending, then by
    gene index ascending (a stable argsort of the negated values), so among tied values the lower
    gene index is taken. NaN values rank after every number. See :func:`hits` for per-spot values.
    """
    return float(hits(true, pred, t).mean())


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------
def top_gene_mean(true: np.ndarray, r: np.ndarray, k: int, by: str = "heg") -> tuple[float, int]:
    """Mean of a per-gene metric ``r`` (Pearson r in the papers) over the top-k genes by total true
    expression or by true variance.

    ``by="heg"`` ranks genes by their column sum in ``true`` (highly expressed genes), ``by="hvg"``
    by their population variance (highly variable genes); descending, ties broken by gene index
    ascending. The top-k genes are chosen FIRST, then the NaN values of ``r`` among them are
    dropped. Returns ``(mean r over the non-NaN selected genes, number of selected genes whose r
    is NaN)``; the mean is NaN when all k are NaN. ``k`` must be between 1 and n_genes.
    """
    t = _as_matrix(true, "true")
    rv = np.asarray(r, dtype=np.float64)
    if rv.shape != (t.shape[1],):
        raise DataError(
            f"r must hold one value per gene: shape ({t.shape[1]},) expected, got {rv.shape}"
        )
    if by == "heg":
        score = t.sum(axis=0)
    elif by == "hvg":
        score = t.var(axis=0)
    else:
        raise OptionError(f"by must be 'heg' or 'hvg', got {by!r}")
    return top_mean_by_score(score, rv, k)


def top_mean_by_score(score: np.ndarray, r: np.ndarray, k: int) -> tuple[float, int]:
    """:func:`top_gene_mean` with the per-gene ranking score (column sum or variance of the truth) given."""
    rv = np.asarray(r, dtype=np.float64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise OptionError(f"k must be an integer, got {k!r}")
    if not 1 <= int(k) <= len(score):
        raise OptionError(f"k must be between 1 and the number of genes ({len(score)}), got {k}")
    # stable sort of the negated score: descending, ties by lower gene index; NaN scores last
    top = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[: int(k)]
    sel = rv[top]
    nan = np.isnan(sel)
    n_nan = int(nan.sum())
    value = float(sel[~nan].mean()) if n_nan < sel.size else float("nan")
    return value, n_nan


top_gene_pearson = top_gene_mean


def gene_summary(values: np.ndarray) -> dict:
    """Summary of a per-gene metric: ``mean`` and ``median`` over the non-NaN genes (NaN when all
    are NaN), ``n_nan`` the number of NaN genes excluded and ``n`` the total number of genes."""
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = v[~np.isnan(v)]
    return {
        "mean": float(ok.mean()) if ok.size else float("nan"),
        "median": float(np.median(ok)) if ok.size else float("nan"),
        "n_nan": int(v.size - ok.size),
        "n": int(v.size),
    }


BUILTIN_METRICS: tuple[Metric, ...] = (
    Metric(
        "rmse",
        higher_is_better=False,
        per_gene=True,
        fn=rmse,
        description="RMSE of z-scored columns per gene; sqrt(2 - 2r), 1.41 means r = 0",
        label="RMSE",
    ),
    Metric(
        "ssim",
        higher_is_better=True,
        per_gene=True,
        fn=ssim,
        description="global SSIM of max-scaled columns per gene",
        label="SSIM",
    ),
    Metric(
        "pearson",
        higher_is_better=True,
        per_gene=True,
        fn=pearson,
        description="Pearson r per gene",
        label="Pearson",
        ranks=True,
        top_genes=True,
    ),
    *(
        Metric(
            f"hit@{t}",
            higher_is_better=True,
            per_gene=False,
            fn=partial(hit_at, t=t),
            description=f"fraction of spots whose top-{t} predicted and true genes intersect",
            label=f"Hit@{t}",
            spot_mean=True,
        )
        for t in (1, 2, 3)
    ),
)
