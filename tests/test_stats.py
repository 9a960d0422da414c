import numpy as np
import pytest
from scipy import stats

from stbench.errors import DataError
from stbench.eval.stats import bootstrap_median_ci, paired_wilcoxon


def test_wilcoxon_matches_scipy_and_drops_nan_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(0.1, 0.2, 300)
    b = a - rng.normal(0.05, 0.1, 300)
    a[[3, 7]] = np.nan
    b[11] = np.nan
    res = paired_wilcoxon(a, b)
    keep = ~(np.isnan(a) | np.isnan(b))
    ref = stats.wilcoxon(a[keep], b[keep])
    assert res.n == 297 and res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert res.p_value < 1e-6 and res.median_difference == pytest.approx(np.median(a[keep] - b[keep]))


def test_wilcoxon_identical_inputs_and_bad_shapes():
    x = np.arange(10.0)
    assert np.isnan(paired_wilcoxon(x, x).p_value)
    with pytest.raises(DataError, match="same length"):
        paired_wilcoxon(x, x[:5])


def test_bootstrap_ci_is_seeded_and_matches_a_loop():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 0.1, 200)
    v[:5] = np.nan
    lo, hi = bootstrap_median_ci(v, n_resamples=500, seed=7)
    assert (lo, hi) == bootstrap_median_ci(v, n_resamples=500, seed=7)
    clean = v[~np.isnan(v)]
    g = np.random.default_rng(7)
    idx = g.integers(0, len(clean), size=(500, len(clean)))
    meds = [np.median(clean[row]) for row in idx]
    assert lo == pytest.approx(np.quantile(meds, 0.025)) and hi == pytest.approx(np.quantile(meds, 0.975))
    assert lo < np.median(clean) < hi
    assert np.isnan(bootstrap_median_ci(np.array([np.nan]))[0])
