"""Benchmark: stbench's vectorised RMSE / SSIM / Pearson against a per-gene pandas loop.

The loop is written in the style of the paper's scripts (SpatialBenchmarking's ``GenesMetrics``,
used by HECLIP): columns are rescaled one at a time and glued back with repeated ``pd.concat``,
then each gene's value is computed in a Python loop and appended to a result DataFrame with
``pd.concat``. Both sides run on the same random matrices in the same process; the script checks
that they agree (max abs difference <= 1e-9) and prints the times and the speedup.

Run by hand (the loop takes minutes at the default size):

    PYTHONPATH=. python benchmarks/bench_metrics.py --spots 2000 --genes 3500 --seed 0
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import pandas as pd
import scipy
import scipy.stats as st

from stbench.eval.metrics import pearson, rmse, ssim

TOL = 1e-9


# ------------------------------------------------------------------------------------------
# reference: per-gene pandas loop in the style of the paper's GenesMetrics
# ------------------------------------------------------------------------------------------
def ref_scale_max(df: pd.DataFrame) -> pd.DataFrame:
    """Divide every gene column by its maximum, building the frame column by column."""
    out = pd.DataFrame()
    for gene, col in df.items():
        col = col / col.max()
        out = pd.concat([out, col], axis=1)
    return out


def ref_scale_zscore(df: pd.DataFrame) -> pd.DataFrame:
    """z-score every gene column with scipy, building the frame column by column."""
    out = pd.DataFrame()
    for gene, col in df.items():
        z = pd.DataFrame(st.zscore(col.to_numpy()), columns=[gene], index=df.index)
        out = pd.concat([out, z], axis=1)
    return out


def ref_cal_ssim(a: np.ndarray, b: np.ndarray, m: float) -> float:
    """Global SSIM of two (n, 1) columns with dynamic range m."""
    mu1 = a.mean()
    mu2 = b.mean()
    s1 = np.sqrt(((a - mu1) ** 2).mean())
    s2 = np.sqrt(((b - mu2) ** 2).mean())
    s12 = ((a - mu1) * (b - mu2)).mean()
    c1 = (0.01 * m) ** 2
    c2 = (0.03 * m) ** 2
    c3 = c2 / 2
    lum = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
    con = (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2)
    struct = (s12 + c3) / (s1 * s2 + c3)
    return lum * con * struct


def ref_ssim(raw: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
    raw = ref_scale_max(raw)
    imp = ref_scale_max(imp)
    result = pd.DataFrame()
    for gene in raw.columns:
        a = raw.loc[:, gene]
        b = imp.loc[:, gene]
        # pick the smaller maximum by indexing a two-element list with a comparison
        # (int(): numpy 2 no longer lets a numpy bool index a list)
        m = [a.max(), b.max()][int(a.max() > b.max())]
        a2 = np.array(a).reshape(-1, 1)
        b2 = np.array(b).reshape(-1, 1)
        value = ref_cal_ssim(a2, b2, m)
        result = pd.concat([result, pd.DataFrame(value, index=["SSIM"], columns=[gene])], axis=1)
    return result


def ref_pearson(raw: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
    result = pd.DataFrame()
    for gene in raw.columns:
        r, _ = st.pearsonr(raw.loc[:, gene], imp.loc[:, gene])
        result = pd.concat([result, pd.DataFrame(r, index=["Pearson"], columns=[gene])], axis=1)
    return result


def ref_rmse(raw: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
    raw = ref_scale_zscore(raw)
    imp = ref_scale_zscore(imp)
    result = pd.DataFrame()
    for gene in raw.columns:
        a = raw.loc[:, gene]
        b = imp.loc[:, gene]
        value = np.sqrt(((a - b) ** 2).mean())
        result = pd.concat([result, pd.DataFrame(value, index=["RMSE"], columns=[gene])], axis=1)
    return result


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def make_data(n_spots: int, n_genes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative log-expression-like matrices (log1p of gamma-Poisson counts), no constant
    column and no all-zero column; pred is a noisy, partly correlated version of true."""
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(mean=0.0, sigma=1.5, size=n_genes)  # wide range of expression
    size_factor = rng.lognormal(mean=0.0, sigma=0.4, size=(n_spots, 1))
    rate = rng.gamma(shape=2.0, scale=gene_mean * size_factor / 2.0)
    counts = rng.poisson(rate).astype(np.float64)
    true = np.log1p(counts)
    pred_rate = 0.5 * rate + 0.5 * rng.gamma(shape=2.0, scale=np.broadcast_to(gene_mean / 2.0, rate.shape))
    pred = np.log1p(pred_rate)  # continuous, like a model's output
    # make sure no column is constant (a few spots get a small count where a gene is all zero)
    for x in (true, pred):
        const = np.flatnonzero(x.max(axis=0) == x.min(axis=0))
        if const.size:
            x[rng.integers(0, n_spots, size=const.size), const] = np.log1p(1.0)
    assert not np.any(true.max(0) == true.min(0)) and not np.any(pred.max(0) == pred.min(0))
    return true, pred


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, default=2000)
    ap.add_argument("--genes", type=int, default=3500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(f"stbench metrics benchmark: {args.spots} spots x {args.genes} genes, seed {args.seed}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"scipy {scipy.__version__}, {os.cpu_count()} CPU(s)"
    )
    true, pred = make_data(args.spots, args.genes, args.seed)
    genes = [f"g{i}" for i in range(args.genes)]
    raw_df = pd.DataFrame(true, columns=genes)
    imp_df = pd.DataFrame(pred, columns=genes)

    metrics = [("rmse", rmse, ref_rmse), ("ssim", ssim, ref_ssim), ("pearson", pearson, ref_pearson)]
    rows = []
    for name, fast, slow in metrics:
        t0 = time.perf_counter()
        v_fast = fast(true, pred)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        v_slow = slow(raw_df, imp_df).loc[:, genes].to_numpy(dtype=np.float64).ravel()
        t_slow = time.perf_counter() - t0
        assert not np.isnan(v_fast).any() and not np.isnan(v_slow).any(), name
        diff = float(np.max(np.abs(v_fast - v_slow)))
        rows.append((name, t_slow, t_fast, diff, float(np.median(v_fast))))
        print(f"  {name}: loop {t_slow:.3f} s, vectorised {t_fast:.4f} s, max abs diff {diff:.3e}",
              flush=True)

    tot_slow = sum(r[1] for r in rows)
    tot_fast = sum(r[2] for r in rows)
    max_diff = max(r[3] for r in rows)
    print()
    print("| metric  | pandas loop (s) | vectorised (s) | speedup | max abs diff |")
    print("|---------|----------------:|---------------:|--------:|-------------:|")
    for name, t_slow, t_fast, diff, _ in rows:
        print(f"| {name:<7} | {t_slow:15.3f} | {t_fast:14.4f} | {t_slow / t_fast:6.0f}x | {diff:12.3e} |")
    print(f"| {'total':<7} | {tot_slow:15.3f} | {tot_fast:14.4f} | {tot_slow / tot_fast:6.0f}x | {max_diff:12.3e} |")
    print("median over genes: " + ", ".join(f"{r[0]} {r[4]:.4f}" for r in rows))
    print()
    ok = max_diff <= TOL
    print(f"values identical within {TOL:g}: {'yes' if ok else 'NO'} (max abs diff {max_diff:.3e})")
    print(f"speedup {tot_slow / tot_fast:.0f}x (target >= 100x: {'met' if tot_slow / tot_fast >= 100 else 'NOT met'})")
    assert ok, f"vectorised and loop values differ by {max_diff:.3e} > {TOL:g}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
