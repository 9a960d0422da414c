"""Frozen-encoder calibration rows (ridge, knn), the shared feature cache, and frozen-encoder training of the
contrastive models and ST-Net. Inputs are kept small (64 px) so the offline EfficientNet-Lite0 runs fast."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stbench.plugins import get_plugin_manager
from stbench.testing import check_learns, check_model

SMALL = ["input_px=64"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "frozen-cache"  # shared by the module's tests: features are reused
    monkeypatch.setenv("STBENCH_CACHE", str(folder))
    return folder


def test_ridge_and_knn_follow_the_model_contract_and_learn_the_synthetic_signal():
    from stbench_frozen.models import KNNModel, RidgeModel

    for cls in (RidgeModel, KNNModel):
        check_model(cls, SMALL + (["k=10"] if cls is KNNModel else []))
    r_ridge, r_random = check_learns(RidgeModel, SMALL)
    r_knn, _ = check_learns(KNNModel, SMALL + ["k=10"])
    assert r_ridge > r_random + 0.15 and r_knn > r_random + 0.15


def test_ridge_is_hests_linear_probe():
    from stbench_frozen.models import RidgeModel, hest_alpha
    from stbench.options import build_options
    from stbench.testing import tiny_fold

    fold = tiny_fold(n_genes=12, patch_px=16)
    model = RidgeModel(build_options(RidgeModel, SMALL)[0])
    model.fit(fold.train, fold.genes)
    n_train = sum(len(s) for s in fold.train)
    n_components = min(256, n_train, model.features(fold.train[0]).shape[1])
    assert model.reduce.named_steps["pca"].n_components_ == n_components
    assert model.alpha == pytest.approx(hest_alpha(n_components, 12)) == pytest.approx(100 / (n_components * 12))
    assert model.ridge.solver == "lsqr" and model.ridge.fit_intercept is False
    pred = model.predict(fold.queries[0])
    centred = model.ridge.predict(model.reduce.transform(model.features(fold.queries[0])))
    np.testing.assert_allclose(pred, centred + model.mean, rtol=1e-5, atol=1e-5)
    import stbench_frozen.models as frozen

    block, frozen.PREDICT_BLOCK = frozen.PREDICT_BLOCK, 3  # blocks of spots (as at 100k spots) change nothing
    try:
        assert len(pred) > 3
        np.testing.assert_allclose(model.predict(fold.queries[0]), pred, rtol=1e-5, atol=1e-5)
    finally:
        frozen.PREDICT_BLOCK = block


def test_the_second_run_computes_no_features(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "own-cache"))
    args = ("run", "--model", "knn", "--dataset", "synthetic", "--folds", "syn1,syn2", "-o", "input_px=64", "-o", "k=10")
    first = cli(*args, "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    listed = [r for r in json.loads(cli("cache", "ls", "--json", "--kind", "features").output) if r["kind"] == "features"]
    assert len(listed) == 4 and all(r["valid"] for r in listed)  # one file per synthetic slide

    from stbench.nn import features

    def refuse(*a, **k):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(features.FrozenEncoder, "encode", refuse)
    again = cli(*args, "--out", str(tmp_path / "b"))  # a second run (its folds reuse every slide's features)
    assert again.exit_code == 0, again.output
    ridge = cli("run", "--model", "ridge", "--dataset", "synthetic", "--folds", "syn3", "-o", "input_px=64",
                "--out", str(tmp_path / "c"))  # another model on the same encoder
    assert ridge.exit_code == 0, ridge.output
    a, b = (json.loads(next((tmp_path / d / "knn").glob("*.json")).read_text())["summary"]["pearson"]["mean"]
            for d in ("a", "b"))
    assert a == b


def test_a_damaged_feature_file_is_recomputed_with_a_warning(tmp_path, cache, caplog):
    from stbench.nn.features import FrozenEncoder, feature_path, features_of, _source_identity

    images = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    encoder = FrozenEncoder(input_px=64)
    first = features_of(images, encoder)
    path = feature_path(encoder, _source_identity(images)[0], 0)
    path.write_bytes(path.read_bytes()[:600])
    again = features_of(images, encoder)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)
    assert any("recomputing" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_a_hub_encoder_offline_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("run", "--model", "ridge", "--dataset", "synthetic", "--folds", "syn1", "-o",
                 "encoder=hf-hub:MahmoodLab/UNI", "--out", str(tmp_path / "o"))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "encoder 'hf-hub:MahmoodLab/UNI' lives on the Hugging Face hub" in lines[0] and "cannot be reached" in lines[0]


@pytest.mark.parametrize("model, options", [
    ("heclip", ["encoder=efficientnet_lite0", "freeze_encoder=true", "input_px=64", "epochs=15", "batch_size=32",
                "top_k=20"]),
    ("stnet", ["encoder=efficientnet_lite0", "freeze_encoder=true", "input_px=64", "input_crop=none", "epochs=15",
               "optimizer=adam", "lr=3e-3", "batch_size=32"]),
])
def test_freeze_encoder_trains_only_the_heads_on_cached_features_and_still_learns(model, options):
    import torch

    cls = get_plugin_manager(env={}).models.get(model)
    r_model, r_random = check_learns(cls, options)
    assert r_model > r_random + 0.15
    from stbench.options import build_options
    from stbench.testing import fit_tiny

    fitted, _ = fit_tiny(cls, options)
    trained = {n for n, p in fitted.net.named_parameters()}
    assert not any(n.startswith(("encoder.", "blocks", "conv_stem")) for n in trained), trained
    assert isinstance(getattr(fitted.net, "encoder", torch.nn.Identity()), torch.nn.Identity)
    check_model(cls, options)  # includes the save/load round trip of a frozen-encoder model
    assert build_options(cls, options)[0].freeze_encoder is True


def test_the_board_marks_frozen_rows_and_says_what_training_adds(cli, tmp_path):
    catalogue = tmp_path / "tiny.toml"  # 16 spots per slide: the default 224 px ridge stays cheap
    catalogue.write_text('''[tiny_syn]
reader = "synthetic"
slides = ["t1", "t2", "t3"]
query = ["t3"]
split = "all"
genes = { set = "all" }
patch_px = 16
params = { grid_width = 4, grid_height = 4, n_genes = 12, n_signal = 6, patch_px = 16, seed = 1 }
''')
    out = tmp_path / "res"

    def run(model, *opts):
        ran = cli("--catalog", str(catalogue), "run", "--model", model, "--dataset", "tiny_syn",
                  *sum((("-o", o) for o in opts), ()), "--out", str(out))
        assert ran.exit_code == 0, ran.output

    run("ridge", "input_px=64")
    run("stnet", "encoder=test_efficientnet", "pretrained=false", "input_px=16", "epochs=1", "batch_size=8")
    assert cli("--catalog", str(catalogue), "leaderboard", "--results", str(out)).exit_code == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert "| ridge (input_px=64) *frozen encoder* |" in board
    finding = "- Above the frozen-encoder `ridge` row, i.e. what training adds over a pretrained encoder"
    assert finding not in board  # only the default-configuration ridge row is the yardstick
    run("ridge")
    assert cli("--catalog", str(catalogue), "leaderboard", "--results", str(out)).exit_code == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert finding in board and "| ridge *frozen encoder* |" in board


def test_smoothing_averages_each_spot_with_its_nearest_neighbours():
    from stbench.nn.spatial import smooth_predictions

    coords = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    pred = np.array([[1.0], [3.0], [10.0], [20.0]], dtype=np.float32)
    np.testing.assert_allclose(smooth_predictions(pred, coords, 2), [[2.0], [2.0], [15.0], [15.0]])
    assert smooth_predictions(pred, coords, 0) is pred and smooth_predictions(pred, coords, 1) is pred
    np.testing.assert_allclose(smooth_predictions(pred, coords, 9), np.full((4, 1), 8.5))  # clamped to all spots


@pytest.mark.parametrize("model", ["knn", "ridge", "heclip", "stnet"])
def test_the_smooth_option_post_processes_each_models_predictions(model):
    from stbench.nn.spatial import smooth_predictions
    from stbench.testing import fit_tiny

    opts = {"knn": ["input_px=64", "k=5"], "ridge": ["input_px=64"],
            "heclip": ["encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16",
                       "top_k=5"],
            "stnet": ["encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16"]}[model]
    cls = get_plugin_manager(env={}).models.get(model)
    plain, fold = fit_tiny(cls, opts)
    smoothed, _ = fit_tiny(cls, opts + ["smooth=5"], fold=fold)
    query = fold.queries[0]
    np.testing.assert_allclose(smoothed.predict(query), smooth_predictions(plain.predict(query), query.coords, 5),
                               rtol=1e-5, atol=1e-6)
