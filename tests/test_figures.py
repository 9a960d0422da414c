from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stbench.report import figures
from stbench.errors import ResultsError, UnknownNameError
from stbench.report.predictions import load_predictions, predictions_path
from stbench.report.results import load_result

HECLIP = ("profile=quick", "epochs=2", "encoder=test_efficientnet", "pretrained=false", "input_px=16")
FOLDS = "syn1,syn2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny real runs, trained once: heclip (history, embeddings), mean (baseline, neither) and
    random-k without a predictions file."""
    import torch

    from stbench.plugins import get_plugin_manager
    from stbench.runner import RunRequest, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("results")
    plugins = get_plugin_manager(env={})
    try:
        paths = {
            "heclip": run(plugins, RunRequest("heclip", "synthetic", folds=FOLDS, options=HECLIP, device="cpu"), out)[1],
            "mean": run(plugins, RunRequest("mean", "synthetic", folds=FOLDS, device="cpu"), out)[1],
            "random-k": run(plugins, RunRequest("random-k", "synthetic", folds=FOLDS, device="cpu",
                                                save_predictions=False), out)[1],
        }
    finally:
        torch.set_num_threads(threads)
    return out, paths


def results(runs, *names):
    return [load_result(runs[1][n]) for n in names]


def slides(runs, name):
    return load_predictions(predictions_path(runs[1][name]))[0]


def assert_png(path: Path, min_w: int = 300, min_h: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert min_w <= w <= 6000 and min_h <= h <= 4000
    assert not list(path.parent.glob("*.tmp"))


def numpy_pearson(true, pred):
    return np.array([np.corrcoef(true[:, j], pred[:, j])[0, 1] if true[:, j].std() and pred[:, j].std() else np.nan
                     for j in range(true.shape[1])])


def test_pearson_per_gene_matches_corrcoef_and_is_nan_for_constant_columns():
    rng = np.random.default_rng(0)
    true, pred = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    pred[:, 2] = 1.0
    true[:, 4] = 0.0
    r = figures.pearson_per_gene(true, pred)
    np.testing.assert_allclose(r, numpy_pearson(true, pred), atol=1e-12)
    assert np.isnan(r[[2, 4]]).all()


def test_best_genes_on_fixed_arrays():
    x = np.arange(10, dtype=float)
    true = np.stack([x, x, x, x, x], axis=1)
    noise = np.array([1, -1, 1, -1, 1, -1, 1, -1, 1, -1], dtype=float)
    pred = np.stack([x + 4 * noise, -x, np.ones(10), x + noise, x], axis=1)
    # r: gene 4 = 1, gene 3 ~ 0.99, gene 0 ~ 0.87, gene 1 = -1, gene 2 = NaN (last)
    assert figures.best_genes(true, pred, 3).tolist() == [4, 3, 0]
    assert figures.best_genes(true, pred, 5).tolist() == [4, 3, 0, 1, 2]
    assert figures.best_genes(true, pred, 0).tolist() == []


def test_best_genes_on_real_predictions_match_numpy(runs):
    s = slides(runs, "heclip")[0]
    r = numpy_pearson(s.true.astype(float), s.pred.astype(float))
    expected = [s.genes[i] for i in np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[:4]]
    assert [s.genes[i] for i in figures.best_genes(s.true, s.pred, 4)] == expected


def test_short_label_drops_profile_values_and_truncates(runs):
    heclip, mean = results(runs, "heclip", "mean")
    assert figures.short_label(mean) == "mean"
    label = figures.short_label(heclip)
    assert label.startswith("heclip quick: ") and "epochs=2" in label and "encoder=test_efficientnet" in label
    assert "batch_size" not in label  # set by the quick profile, not by the user
    short = figures.short_label(heclip, max_len=20)
    assert len(short) == 20 and short.endswith("…")


def test_figure_labels_keep_only_what_tells_runs_of_a_model_apart(runs):
    heclip = results(runs, "heclip")[0]
    other = load_result(runs[1]["heclip"])
    other.extra = {**other.extra, "profile_changes": {**other.extra["profile_changes"], "top_k": 10}}
    assert figures.figure_labels([heclip, other]) == ["heclip quick", "heclip quick: top_k=10"]


def test_slugify():
    assert figures.slugify("HECLIP quick: epochs=2, top_k=10") == "heclip-quick-epochs-2-top_k-10"
    assert figures.slugify("///") == "run"


def test_metric_boxplots_orders_like_the_leaderboard(runs, tmp_path):
    rs = results(runs, "mean", "random-k", "heclip")
    assert [r.model for r in figures.leaderboard_order(rs)][0] == "heclip"
    assert figures.leaderboard_order(rs)[-1].baseline
    out = figures.metric_boxplots(rs, tmp_path / "box.png", metrics=("rmse", "ssim", "pearson"))
    assert out == tmp_path / "box.png"
    assert_png(out, min_w=600)


def test_metric_boxplots_rejects_unrecorded_metric(runs, tmp_path):
    with pytest.raises(ResultsError, match="hit@1"):
        figures.metric_boxplots(results(runs, "heclip"), tmp_path / "x.png", metrics=("hit@1",))
    assert not (tmp_path / "x.png").exists()


def test_loss_curves(runs, tmp_path):
    assert_png(figures.loss_curves(results(runs, "heclip", "mean"), tmp_path / "loss.png"))
    with pytest.raises(ResultsError, match="no loss history"):
        figures.loss_curves(results(runs, "mean", "random-k"), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_embedding_umap(runs, tmp_path):
    assert_png(figures.embedding_umap(slides(runs, "heclip"), tmp_path / "umap.png", "heclip", seed=0))
    with pytest.raises(ResultsError, match="model mean stores no image embeddings"):
        figures.embedding_umap(slides(runs, "mean"), tmp_path / "none.png", "mean")
    with pytest.raises(ResultsError, match="fold 'nope'"):
        figures.embedding_umap(slides(runs, "heclip"), tmp_path / "none.png", "heclip", fold="nope")


def test_embedding_umap_needs_five_points(runs, tmp_path):
    s = slides(runs, "heclip")[0]
    s.embeddings = {k: v[:2] for k, v in s.embeddings.items()}
    s.embedding_slides = {k: v[:2] for k, v in s.embedding_slides.items()}
    with pytest.raises(ResultsError, match="at least 5"):
        figures.embedding_umap([s], tmp_path / "tiny.png", "heclip")


def test_spatial_maps_shows_the_best_predicted_genes(runs, tmp_path, monkeypatch):
    s = slides(runs, "heclip")[0]
    chosen = []
    real = figures.best_genes
    monkeypatch.setattr(figures.spatial, "best_genes", lambda t, p, n: chosen.append(real(t, p, n)) or chosen[-1])
    assert_png(figures.spatial_maps(s, tmp_path / "spatial.png", n_genes=3, label="heclip"), min_w=600)
    r = numpy_pearson(s.true.astype(float), s.pred.astype(float))
    assert sorted(r[chosen[0]], reverse=True) == sorted(r[np.isfinite(r)], reverse=True)[:3]


def test_spatial_maps_named_genes_and_no_thumbnail(runs, tmp_path):
    s = slides(runs, "mean")[0]
    s.thumbnail = None
    assert_png(figures.spatial_maps(s, tmp_path / "named.png", genes=s.genes[:2]))
    with pytest.raises(ResultsError, match="NOPE"):
        figures.spatial_maps(s, tmp_path / "bad.png", genes=["NOPE"])


def test_plot_run(runs, tmp_path):
    written = figures.plot_run(runs[1]["heclip"], tmp_path, kinds=("box", "loss", "spatial"))
    assert [p.name for p in written] == ["synthetic.strict.boxplot.png", "synthetic.strict.loss.png",
                                         "synthetic.strict.heclip.spatial.png"]
    assert figures.plot_run(runs[1]["random-k"], tmp_path / "rk", kinds=("loss", "umap", "spatial")) == []
    with pytest.raises(UnknownNameError, match="figure kind 'boxes'"):
        figures.plot_run(runs[1]["heclip"], tmp_path, kinds=("boxes",))


def test_plot_dir_writes_every_supported_figure(runs, tmp_path):
    out = tmp_path / "figs"
    written = figures.plot_dir(runs[0], out)
    names = sorted(p.name for p in written)
    assert names == sorted([
        "synthetic.strict.boxplot.png", "synthetic.strict.loss.png",
        "synthetic.strict.heclip.umap.png", "synthetic.strict.heclip.spatial.png",
        "synthetic.strict.mean.spatial.png",  # random-k has no predictions file: skipped
    ])
    assert sorted(p.name for p in out.iterdir()) == names
    for p in written:
        assert_png(p)
    with pytest.raises(ResultsError, match="match"):
        figures.plot_dir(runs[0], out, dataset="her2st")
    with pytest.raises(ResultsError, match="no results files"):
        figures.plot_dir(tmp_path / "empty", out)


def test_module_import_is_cheap():
    import subprocess
    import sys

    code = ("import sys, stbench.report.figures; "
            "print(any(m in sys.modules for m in ('matplotlib', 'umap', 'torch')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_cli_plot_writes_pngs_for_a_results_folder(cli, runs, tmp_path):
    folder = runs[0]
    out = tmp_path / "png"
    res = cli("plot", str(folder), "--out", str(out), "--kind", "box,spatial")
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in out.glob("*.png"))
    assert "synthetic.strict.boxplot.png" in names and any(n.endswith(".spatial.png") for n in names)
    assert all(p.stat().st_size > 1000 for p in out.glob("*.png"))
    bad = cli("plot", str(folder), "--out", str(out), "--kind", "boxplot")
    assert bad.exit_code == 2 and "boxplot" in bad.stderr


def test_plot_dir_filters_by_seed(runs, tmp_path):
    assert figures.plot_dir(runs[0], tmp_path / "a", kinds=("box",), seed=0)
    with pytest.raises(ResultsError, match="match seed 7"):
        figures.plot_dir(runs[0], tmp_path / "b", kinds=("box",), seed=7)
