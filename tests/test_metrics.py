"""Tests for stbench.eval.metrics: vectorised metrics against literal per-gene loops and hand cases."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from stbench.errors import DataError, OptionError
from stbench.metric import Metric
from stbench.eval.metrics import (
    BUILTIN_METRICS,
    HEG_HVG_K,
    gene_summary,
    hit_at,
    hits,
    pearson,
    rmse,
    ssim,
    top_gene_pearson,
)

TOL = 1e-9
SEEDS = (0, 1, 2, 3)


# ------------------------------------------------------------------------------------------
# literal per-gene reference loops, written from the spec
# ------------------------------------------------------------------------------------------
def loop_rmse(true, pred):
    out = []
    for g in range(true.shape[1]):
        zt = scipy.stats.zscore(true[:, g])  # ddof=0; NaN for a constant column
        zp = scipy.stats.zscore(pred[:, g])
        out.append(math.sqrt(np.mean((zt - zp) ** 2)) if not np.isnan(zt - zp).any() else np.nan)
    return np.array(out)


def loop_ssim(true, pred):
    out = []
    for g in range(true.shape[1]):
        a, b = true[:, g], pred[:, g]
        if a.max() == 0 or b.max() == 0:
            out.append(np.nan)
            continue
        x = a / a.max()
        y = b / b.max()
        m = min(x.max(), y.max())
        mu1, mu2 = x.mean(), y.mean()
        s1 = math.sqrt(((x - mu1) ** 2).mean())
        s2 = math.sqrt(((y - mu2) ** 2).mean())
        s12 = ((x - mu1) * (y - mu2)).mean()
        c1, c2 = (0.01 * m) ** 2, (0.03 * m) ** 2
        c3 = c2 / 2
        out.append(
            (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
            * (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2)
            * (s12 + c3) / (s1 * s2 + c3)
        )
    return np.array(out)


def loop_pearson(true, pred):
    out = []
    for g in range(true.shape[1]):
        a, b = true[:, g], pred[:, g]
        if (a == a[0]).all() or (b == b[0]).all():
            out.append(np.nan)
        else:
            out.append(scipy.stats.pearsonr(a, b)[0])
    return np.array(out)


def loop_top(row, t):
    """Indices of the t top values: value descending, then gene index ascending."""
    return set(sorted(range(len(row)), key=lambda i: (-row[i], i))[:t])


def loop_hits(true, pred, t):
    return np.array([bool(loop_top(true[s], t) & loop_top(pred[s], t)) for s in range(len(true))])


def random_pair(seed, n_spots=50, n_genes=30, negative=False):
    rng = np.random.default_rng(seed)
    true = np.log1p(rng.gamma(0.7, 3.0, size=(n_spots, n_genes)))
    pred = 0.4 * true + rng.normal(0, 0.5, size=(n_spots, n_genes)) + 1.0
    if negative:
        true = true - 1.5  # many negative values, some all-negative columns
        pred = pred - 3.0
        true[:, 0] = -np.abs(true[:, 0]) - 0.1  # max < 0
        pred[:, 1] = -np.abs(pred[:, 1]) - 0.1
    return true, pred


def assert_close_with_nan(a, b, tol=TOL):
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    assert np.max(np.abs(a[ok] - b[ok]), initial=0.0) <= tol


# ------------------------------------------------------------------------------------------
# vectorised == loop
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "fn,loop", [(rmse, loop_rmse), (ssim, loop_ssim), (pearson, loop_pearson)], ids=["rmse", "ssim", "pearson"]
)
def test_matches_per_gene_loop(fn, loop, seed, negative):
    true, pred = random_pair(seed, negative=negative)
    got = fn(true, pred)
    want = loop(true, pred)
    assert got.dtype == np.float64 and got.shape == (30,)
    assert not np.isnan(want).any()
    assert_close_with_nan(got, want)


def test_rmse_is_sqrt_2_minus_2r():
    true, pred = random_pair(7)
    np.testing.assert_allclose(rmse(true, pred), np.sqrt(2 - 2 * pearson(true, pred)), atol=1e-9)


def test_float32_input_is_computed_in_float64():
    true, pred = random_pair(5)
    got = pearson(true.astype(np.float32), pred.astype(np.float32))
    want = loop_pearson(true.astype(np.float32).astype(np.float64), pred.astype(np.float32).astype(np.float64))
    assert got.dtype == np.float64
    assert_close_with_nan(got, want)


# ------------------------------------------------------------------------------------------
# hand-computed cases
# ------------------------------------------------------------------------------------------
def test_rmse_hand_cases():
    # column 0: pred = 2 * true -> identical z-scores -> RMSE 0
    # column 1: pred reversed -> z_pred = -z_true, (z_t - z_p)^2 = 4 z_t^2, mean(z^2) = 1 -> RMSE 2
    # column 2: true [1,2,3] -> z = [-1,0,1]/sqrt(2/3); pred [1,3,2] -> z = [-1,1,0]/sqrt(2/3);
    #           diff^2 = [0,1,1] * 3/2 -> mean 1 -> RMSE 1 (r = 0.5, sqrt(2 - 1) = 1)
    true = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    pred = np.array([[2.0, 3.0, 1.0], [4.0, 2.0, 3.0], [6.0, 1.0, 2.0]])
    np.testing.assert_allclose(rmse(true, pred), [0.0, 2.0, 1.0], atol=1e-12)


def test_pearson_hand_cases():
    # column 0: x=[1,2,3], y=[1,3,2]: xc=[-1,0,1], yc=[-1,1,0]; sxy=1, sxx=syy=2 -> r = 0.5
    # column 1: y = -3x + 7 -> r = -1 exactly (clipped like scipy)
    # column 2: x=[1,2,3,...] vs y=[2,1,4]: xc=[-1,0,1], yc=[-1/3,-4/3,5/3]; sxy=2, sxx=2,
    #           syy=(1+16+25)/9=42/9 -> r = 2/sqrt(2*42/9) = 2/sqrt(84/9) = 6/sqrt(84)
    true = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    pred = np.array([[1.0, 4.0, 2.0], [3.0, 1.0, 1.0], [2.0, -2.0, 4.0]])
    r = pearson(true, pred)
    np.testing.assert_allclose(r, [0.5, -1.0, 6 / math.sqrt(84)], atol=1e-12)
    assert np.all(np.abs(r) <= 1.0)


def test_ssim_identical_columns_is_one():
    true, _ = random_pair(3)
    np.testing.assert_allclose(ssim(true, true), 1.0, atol=1e-12)
    # a positive rescaling is removed by the max-scaling
    np.testing.assert_allclose(ssim(true, 5.0 * true), 1.0, atol=1e-12)


def test_ssim_hand_case():
    # column 0: x = [1,0,1,0] (max 1), y = [2,2,0,0] / 2 = [1,1,0,0]; M = 1
    #   mu1 = mu2 = 0.5, s1 = s2 = 0.5, cov = mean([.25,-.25,-.25,.25]) = 0
    #   C1 = 1e-4, C2 = 9e-4, C3 = 4.5e-4: luminance = 1, contrast = 1,
    #   structure = (0 + 4.5e-4) / (0.25 + 4.5e-4)           -> SSIM = 0.00045 / 0.25045 ~ 0.0017968
    # column 1: x = [1,0,1,0], y = [4,4,4,0] / 4 = [1,1,1,0]; M = 1
    #   mu1 = 0.5, mu2 = 0.75, s1 = 0.5, s2 = sqrt(0.1875) ~ 0.4330127
    #   cov = mean([.5*.25, -.5*.25, .5*.25, -.5*-.75]) = 0.5 / 4 = 0.125
    #   luminance = (2*.5*.75 + 1e-4) / (.25 + .5625 + 1e-4)      = 0.7501 / 0.8126
    #   contrast  = (2*.5*s2 + 9e-4) / (.25 + .1875 + 9e-4)        = (s2 + 0.0009) / 0.4384
    #   structure = (0.125 + 4.5e-4) / (.5*s2 + 4.5e-4)           = 0.12545 / (0.5 s2 + 0.00045)
    #   SSIM ~ 0.92309 * 0.98976 * 0.57823 ~ 0.52829
    true = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    pred = np.array([[2.0, 4.0], [2.0, 4.0], [0.0, 4.0], [0.0, 0.0]])
    s2 = math.sqrt(0.1875)
    want0 = 0.00045 / 0.25045
    want1 = (0.7501 / 0.8126) * ((s2 + 0.0009) / 0.4384) * (0.12545 / (0.5 * s2 + 0.00045))
    got = ssim(true, pred)
    np.testing.assert_allclose(got, [want0, want1], rtol=1e-12)
    assert abs(got[1] - 0.52829) < 1e-4


def test_ssim_uses_smaller_scaled_max():
    # true column all negative: x / max(x) = [-1,-2,-4] / -1 = [1,2,4], scaled max 4;
    # pred column [1,2,3] / 3, scaled max 1 -> M = min(4, 1) = 1 (matches the literal loop)
    true = np.array([[-1.0], [-2.0], [-4.0]])
    pred = np.array([[1.0], [2.0], [3.0]])
    assert_close_with_nan(ssim(true, pred), loop_ssim(true, pred))
    # both negative: scaled maxima 4 and 3 -> M = 3
    pred2 = np.array([[-1.0], [-3.0], [-2.0]])
    x = np.array([1.0, 2.0, 4.0])
    y = np.array([1.0, 3.0, 2.0])
    m = 3.0
    mu1, mu2, s1, s2 = x.mean(), y.mean(), x.std(), y.std()
    s12 = ((x - mu1) * (y - mu2)).mean()
    c1, c2 = (0.01 * m) ** 2, (0.03 * m) ** 2
    c3 = c2 / 2
    want = ((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * (2 * s1 * s2 + c2)
            / (s1**2 + s2**2 + c2) * (s12 + c3) / (s1 * s2 + c3))
    np.testing.assert_allclose(ssim(true, pred2), [want], rtol=1e-12)


# ------------------------------------------------------------------------------------------
# NaN genes
# ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_constant_genes_give_nan_and_are_excluded_from_summary():
    true, pred = random_pair(11, n_spots=7, n_genes=5)
    # 0.1 repeated 7 times: np.std is ~1.4e-17, not 0 - must still count as constant (like scipy)
    true[:, 1] = 0.1
    pred[:, 3] = 2.0
    for fn in (rmse, pearson):
        vals = fn(true, pred)
        assert np.isnan(vals[1]) and np.isnan(vals[3])
        assert not np.isnan(vals[[0, 2, 4]]).any()
        s = gene_summary(vals)
        assert s["n_nan"] == 2 and s["n"] == 5
        ok = vals[[0, 2, 4]]
        assert s["mean"] == pytest.approx(ok.mean(), abs=1e-15)
        assert s["median"] == pytest.approx(np.median(ok), abs=1e-15)
        assert_close_with_nan(vals, (loop_rmse if fn is rmse else loop_pearson)(true, pred))


def test_zero_max_column_gives_nan_ssim():
    true, pred = random_pair(12, n_spots=6, n_genes=4)
    true[:, 0] = 0.0
    pred[:, 2] = [-1.0, 0.0, -2.0, -3.0, 0.0, -1.0]  # max is 0
    vals = ssim(true, pred)
    assert np.isnan(vals[0]) and np.isnan(vals[2])
    assert not np.isnan(vals[[1, 3]]).any()
    assert gene_summary(vals)["n_nan"] == 2


def test_gene_summary():
    s = gene_summary(np.array([1.0, np.nan, 3.0, 10.0]))
    assert s == {"mean": pytest.approx(14 / 3), "median": 3.0, "n_nan": 1, "n": 4}
    assert isinstance(s["n_nan"], int) and isinstance(s["n"], int)
    allnan = gene_summary(np.array([np.nan, np.nan]))
    assert math.isnan(allnan["mean"]) and math.isnan(allnan["median"])
    assert allnan["n_nan"] == 2 and allnan["n"] == 2


def test_nan_input_propagates_to_that_gene_only():
    true, pred = random_pair(13, n_spots=8, n_genes=4)
    true[2, 1] = np.nan
    for fn in (rmse, ssim, pearson):
        vals = fn(true, pred)
        assert np.isnan(vals[1])
        assert not np.isnan(vals[[0, 2, 3]]).any()


# ------------------------------------------------------------------------------------------
# Hit@T
# ------------------------------------------------------------------------------------------
def test_hit_ties_lower_gene_index_wins():
    true = np.array(
        [
            [5.0, 1.0, 5.0, 0.0],  # t=1: R = {0} (0 beats 2 on the tie)
            [0.0, 2.0, 0.0, 0.0],  # t=1: R = {1}
            [1.0, 1.0, 1.0, 0.0],  # t=2: R = {0, 1}
        ]
    )
    pred = np.array(
        [
            [0.0, 1.0, 9.0, 0.0],  # P = {2}: no hit (a higher-index-wins rule would hit)
            [3.0, 3.0, 0.0, 0.0],  # P = {0}: no hit (a higher-index-wins rule would hit)
            [0.0, 0.0, 9.0, 9.0],  # t=2: P = {2, 3}: no hit (R = {1, 2} under the other rule)
        ]
    )
    np.testing.assert_array_equal(hits(true[:2], pred[:2], 1), [False, False])
    assert hit_at(true[:2], pred[:2], 1) == 0.0
    assert not hits(true[2:], pred[2:], 2)[0]
    # a tie inside the pred set: pred [3, 3, 3, 0] with t=2 -> P = {0, 1}
    assert hits(np.array([[0.0, 9.0, 0.0, 0.0]]), np.array([[3.0, 3.0, 3.0, 0.0]]), 2)[0]
    # true [0, 0, 9, 1] -> R = {2, 3}; P = {0, 1}: no hit (P = {1, 2} under the other rule)
    assert not hits(np.array([[0.0, 0.0, 9.0, 1.0]]), np.array([[3.0, 3.0, 3.0, 0.0]]), 2)[0]
    # t=1, everything tied -> both pick gene 0 -> hit
    assert hit_at(np.zeros((3, 5)), np.ones((3, 5)), 1) == 1.0


def test_hit_equals_stable_argsort_rule():
    rng = np.random.default_rng(21)
    true = rng.integers(0, 3, size=(200, 12)).astype(float)  # many ties
    pred = rng.integers(0, 3, size=(200, 12)).astype(float)
    for t in (1, 2, 3, 5):
        p = np.argsort(-pred, axis=1, kind="stable")[:, :t]
        r = np.argsort(-true, axis=1, kind="stable")[:, :t]
        want = np.array([bool(set(a) & set(b)) for a, b in zip(p, r)])
        np.testing.assert_array_equal(hits(true, pred, t), want)


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_hit_matches_loop(seed, t):
    true, pred = random_pair(seed)
    got = hits(true, pred, t)
    want = loop_hits(true, pred, t)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    assert hit_at(true, pred, t) == pytest.approx(want.mean(), abs=0)
    assert 0.0 < want.mean() < 1.0  # the case is not trivial


def test_hit_nan_ranks_last():
    true = np.array([[np.nan, 1.0, 0.0]])
    pred = np.array([[0.0, 1.0, 0.0]])
    assert hit_at(true, pred, 1) == 1.0  # R = {1}, not the NaN gene 0


def test_hit_bad_t():
    true, pred = random_pair(0, n_spots=4, n_genes=3)
    for bad in (0, 4, 1.5):
        with pytest.raises(OptionError):
            hit_at(true, pred, bad)


# ------------------------------------------------------------------------------------------
# HEG / HVG
# ------------------------------------------------------------------------------------------
def test_top_gene_pearson_ranks_before_dropping_nan():
    # column sums 10, 8, 6, 4 -> HEG order 0, 1, 2, 3
    true = np.array([[5.0, 4.0, 3.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    r = np.array([np.nan, 0.5, 0.3, 0.1])
    # top-2 = genes {0, 1}; gene 0 is NaN -> mean over gene 1 only
    assert top_gene_pearson(true, r, 2, by="heg") == (0.5, 1)
    # (filtering NaN first gives r = [0.5, 0.3, 0.1] and top-2 mean 0.4: the reference bug)
    value, n_nan = top_gene_pearson(true, r, 1, by="heg")
    assert math.isnan(value) and n_nan == 1
    assert top_gene_pearson(true, r, 4, by="heg") == (pytest.approx(0.3), 1)


def test_top_gene_pearson_hvg_and_ties():
    # gene 0: large sum, no variance; genes 1-3: equal variance (1.0), gene 3 smaller sum
    true = np.array([[10.0, 0.0, 2.0, 1.0], [10.0, 2.0, 0.0, -1.0]])
    r = np.array([0.9, 0.1, 0.2, 0.3])
    assert top_gene_pearson(true, r, 1, by="heg") == (0.9, 0)
    # hvg: variances 0, 1, 1, 1 -> ties among 1, 2, 3 broken by lower index: top-1 = gene 1
    assert top_gene_pearson(true, r, 1, by="hvg") == (0.1, 0)
    assert top_gene_pearson(true, r, 2, by="hvg") == (pytest.approx(0.15), 0)
    # heg ties: sums 5, 5, 5, 1 -> top-2 = genes 0, 1
    true2 = np.array([[5.0, 5.0, 5.0, 1.0]])
    assert top_gene_pearson(true2, r, 2, by="heg") == (pytest.approx(0.5), 0)


def test_top_gene_pearson_bad_input():
    true = np.ones((3, 4))
    with pytest.raises(DataError):
        top_gene_pearson(true, np.zeros(3), 1)
    with pytest.raises(OptionError):
        top_gene_pearson(true, np.zeros(4), 1, by="mean")
    with pytest.raises(OptionError):
        top_gene_pearson(true, np.zeros(4), 5)
    assert HEG_HVG_K == (1, 3, 5, 10, 50, 100)


# ------------------------------------------------------------------------------------------
# bad input, registry, import cost
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [rmse, ssim, pearson, lambda a, b: hit_at(a, b, 1)], ids=["rmse", "ssim", "pearson", "hit"])
def test_bad_input_raises_data_error(fn):
    a = np.ones((4, 3))
    with pytest.raises(DataError, match="shape"):
        fn(a, np.ones((4, 2)))
    with pytest.raises(DataError, match="2-D"):
        fn(np.ones(4), np.ones(4))
    bad = np.ones((4, 3))
    bad[1, 1] = np.inf
    with pytest.raises(DataError, match="inf"):
        fn(a, bad)
    with pytest.raises(DataError):
        fn(np.ones((0, 3)), np.ones((0, 3)))
    # one line each
    try:
        fn(a, np.ones((5, 3)))
    except DataError as exc:
        assert "\n" not in str(exc)


def test_builtin_metrics():
    by_name = {m.name: m for m in BUILTIN_METRICS}
    assert list(by_name) == ["rmse", "ssim", "pearson", "hit@1", "hit@2", "hit@3"]
    assert all(isinstance(m, Metric) for m in BUILTIN_METRICS)
    assert not by_name["rmse"].higher_is_better
    assert all(by_name[n].higher_is_better for n in ("ssim", "pearson", "hit@1", "hit@2", "hit@3"))
    assert [m.per_gene for m in BUILTIN_METRICS] == [True, True, True, False, False, False]
    true, pred = random_pair(4)
    for t in (1, 2, 3):
        v = by_name[f"hit@{t}"].compute(true, pred)
        assert isinstance(v, float) and v == loop_hits(true, pred, t).mean()
    assert_close_with_nan(by_name["ssim"].compute(true, pred), loop_ssim(true, pred))


def test_import_does_not_pull_pandas_or_torch():
    code = (
        "import sys, stbench.eval.metrics; "
        "bad = [m for m in ('pandas', 'torch', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
