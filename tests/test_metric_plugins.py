"""Metrics are plugins like models: a spatial metric receives the spots' coordinates and reaches the
board; which metric ranks the board is the metrics' declaration, not a name in the core."""
from __future__ import annotations

import json

import numpy as np

from stbench.report.leaderboard import BoardContext, render
from stbench.report.results import load_result

MORAN_PLUGIN = '''
import numpy as np
from scipy.spatial import cKDTree

from stbench import Metric, hookimpl


def residual_moran(true, pred, coords, k=4):
    """Moran's I of each gene's residuals over the k nearest spots (row-standardised weights)."""
    z = (pred - true) - (pred - true).mean(0)
    _, nn = cKDTree(coords).query(coords, k=k + 1)
    lag = z[nn[:, 1:]].mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (z * lag).sum(0) / (z * z).sum(0)


@hookimpl
def register_metrics(register):
    register(Metric("residual_moran", higher_is_better=False, per_gene=True, spatial=True, fn=residual_moran,
                    label="Moran's I of residuals", description="spatial autocorrelation left in the errors"))
'''


def moran(true, pred, coords, k=4):
    from scipy.spatial import cKDTree

    z = (pred - true) - (pred - true).mean(0)
    _, nn = cKDTree(coords).query(coords, k=k + 1)
    out = np.empty(z.shape[1])
    for g in range(z.shape[1]):
        lag = np.array([z[nn[i, 1:], g].mean() for i in range(len(z))])
        out[g] = (z[:, g] * lag).sum() / (z[:, g] ** 2).sum()
    return out


def test_a_spatial_metric_plugin_gets_coordinates_and_a_column_on_the_board(cli, tmp_path):
    import h5py

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "moran.py").write_text(MORAN_PLUGIN)
    out = tmp_path / "res"
    ran = cli("--plugins-dir", str(plugins), "run", "--model", "random-k", "--dataset", "synthetic", "--folds", "syn2",
              "--out", str(out))
    assert ran.exit_code == 0, ran.output
    (path,) = (out / "random-k").glob("*.json")
    result = load_result(path)
    assert result.metrics["residual_moran"] == {"higher_is_better": False, "per_gene": True,
                                                "label": "Moran's I of residuals", "ranks": False,
                                                "top_genes": False, "spatial": True}
    with h5py.File(path.with_name(path.name.replace(".json", ".predictions.h5")), "r") as f:
        slide = f["slides/000"]
        want = moran(slide["true"][()].astype(float), slide["pred"][()].astype(float), slide["coords"][()])
    np.testing.assert_allclose(result.per_gene(0, "residual_moran"), want, rtol=1e-4, atol=1e-5)
    board = cli("--plugins-dir", str(plugins), "leaderboard", "--results", str(out))
    assert board.exit_code == 0
    text = (out / "LEADERBOARD.md").read_text()
    assert "| Moran's I of residuals ↓ median | Moran's I of residuals ↓ mean |" in text


def test_the_ranking_metric_is_declared_not_named(cli, tmp_path):
    out = tmp_path / "res"
    for k in ("5", "50"):
        assert cli("run", "--model", "random-k", "--dataset", "synthetic", "--folds", "syn1,syn2", "-o", f"k={k}",
                   "--out", str(out)).exit_code == 0
    results = [load_result(p) for p in sorted(out.rglob("*.json"))]
    for r in results:  # as if they were trained models, so the board ranks them
        r.baseline = False
        r.extra["card"] = {"baseline": False, "claims": [], "calibration": "", "kind": "trained"}
    core = BoardContext.core().metrics

    def first_row(ranking: str) -> str:
        metrics = {n: {**m, "ranks": n == ranking} for n, m in core.items()}
        for r in results:
            r.metrics = {n: metrics[n] for n in r.metrics}
        text = render(results, context=BoardContext(metrics=metrics))
        table = text.split("| Model |")[1].splitlines()
        return table[2].split("|")[1].strip(), text

    by_rmse = sorted(results, key=lambda r: r.summary["rmse"]["mean"])[0].label
    by_ssim = sorted(results, key=lambda r: -r.summary["ssim"]["mean"])[0].label
    assert first_row("rmse")[0] == by_rmse and "`RMSE median 95% CI`" in first_row("rmse")[1]
    assert first_row("ssim")[0] == by_ssim and "Highest mean per-gene SSIM" in first_row("ssim")[1]
    assert json.dumps(BoardContext.core().metrics["pearson"]["ranks"]) == "true"
