"""Bundles: every built-in model trains, saves and loads into exactly the same predictions; damaged,
incomplete or incompatible bundles are refused in one line; `stbench train` and `run --save-models`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from stbench.bundle import BundleError, load_bundle, read_manifest
from stbench.plugins import get_plugin_manager
from stbench.training import TrainRequest, train

TINY = {
    "heclip": ("encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16", "top_k=5"),
    "bleep": ("encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16", "top_k=5",
              "input_crop=none"),
    "clip": ("encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16", "top_k=5",
             "input_crop=none"),
    "stnet": ("encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=16"),
    "histogene": ("dim=16", "depth=1", "heads=2", "dim_head=8", "mlp_dim=16", "epochs=2", "patch_crop=16"),
    "mean": (),
    "random-k": ("k=5",),
}


@pytest.fixture(scope="module")
def plugins():
    return get_plugin_manager(env={})


@pytest.mark.parametrize("model", sorted(TINY))
def test_every_built_in_model_round_trips_through_a_bundle(plugins, tmp_path, model):
    fitted, manifest = train(plugins, TrainRequest(model, "synthetic", slides=("syn1", "syn2"), options=TINY[model]),
                             tmp_path / "b")
    query = plugins.datasets.get("synthetic").slide("syn3")[0].without_expression()
    loaded = load_bundle(tmp_path / "b", plugins)
    np.testing.assert_array_equal(loaded.model.predict(query), fitted.predict(query))
    assert loaded.genes == manifest["genes"] and loaded.patch_px == 32 and loaded.pixel_size_um == 1.0
    assert manifest["training"]["slides"] == ["syn1", "syn2"] and manifest["training"]["n_spots"] == 448
    assert manifest["preprocessing"]["normalisation"] == "normalize_total(median)+log1p"
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"manifest.json", "model.safetensors"} <= names <= {"manifest.json", "model.safetensors", "model.json"}
    assert set(manifest["files"]) == names - {"manifest.json"}
    raw = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert raw[8:9] == b"{"  # a safetensors header, not a pickle


def test_the_data_hash_names_the_training_data(plugins, tmp_path):
    a = train(plugins, TrainRequest("mean", "synthetic", slides=("syn1", "syn2")))[1]["training"]["data_sha256"]
    b = train(plugins, TrainRequest("mean", "synthetic", slides=("syn1", "syn2")))[1]["training"]["data_sha256"]
    c = train(plugins, TrainRequest("mean", "synthetic", slides=("syn1", "syn3")))[1]["training"]["data_sha256"]
    assert a == b != c and re.fullmatch(r"[0-9a-f]{64}", a)


@pytest.fixture
def bundle(plugins, tmp_path):
    train(plugins, TrainRequest("random-k", "synthetic", slides=("syn1", "syn2"), options=("k=5",)), tmp_path / "b")
    return tmp_path / "b"


def test_a_bundle_of_another_model_version_is_refused(plugins, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model_version"] = "0"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as e:
        load_bundle(bundle, plugins)
    assert str(e.value) == (f"bundle {bundle} holds model 'random-k' version 0, the installed plugin is version 1; "
                            f"train the bundle again or install the matching plugin")
    manifest["schema"] = "stbench.bundle/9"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"has schema 'stbench.bundle/9', this stbench reads 'stbench.bundle/1'"):
        read_manifest(bundle)


def test_damaged_and_incomplete_bundles_are_refused(plugins, bundle):
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.safetensors does not match its manifest \(damaged or edited\)"):
        load_bundle(bundle, plugins)
    weights.unlink()
    with pytest.raises(BundleError, match="is incomplete: model.safetensors is missing"):
        load_bundle(bundle, plugins)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json; it is incomplete"):
        load_bundle(bundle, plugins)


def test_stbench_train_writes_a_bundle_and_refuses_mistakes_in_one_line(cli, tmp_path):
    out = tmp_path / "bundle"
    ok = cli("train", "--model", "mean", "--dataset", "synthetic", "--slides", "syn1,syn2", "--out", str(out))
    assert ok.exit_code == 0, ok.output
    assert read_manifest(out)["training"]["slides"] == ["syn1", "syn2"]
    for args, message in ((("--slides", "syn1,syn9"), "dataset 'synthetic' has no slide 'syn9'"),
                          (("--slides", "syn1"), f"bundle folder {out} already exists")):
        bad = cli("train", "--model", "mean", "--dataset", "synthetic", *args, "--out", str(out))
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"stbench: error: {message}"), bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no half-written folder beside it


def test_run_save_models_keeps_each_folds_bundle_which_predicts_what_the_run_scored(cli, plugins, tmp_path):
    import h5py

    models = tmp_path / "models"
    ran = cli("run", "--model", "stnet", "--dataset", "synthetic", "--folds", "syn1,syn2", *sum((("-o", o) for o in TINY["stnet"]), ()),
              "--out", str(tmp_path / "res"), "--save-models", str(models))
    assert ran.exit_code == 0, ran.output
    assert sorted(p.name for p in models.iterdir()) == ["query=syn1", "query=syn2"]
    (pred_file,) = (tmp_path / "res" / "stnet").glob("*.predictions.h5")
    with h5py.File(pred_file, "r") as f:
        scored = {f[k].attrs["query"]: f[k]["pred"][()] for k in f["slides"] for k in [f"slides/{k}"]}
    loaded = load_bundle(models / "query=syn2", plugins)
    assert loaded.manifest["training"]["slides"] == ["syn1", "syn3", "syn4"]
    query = plugins.datasets.get("synthetic").slide("syn2")[0].without_expression()
    np.testing.assert_allclose(loaded.model.predict(query), scored["syn2"], rtol=1e-3, atol=1e-3)  # stored as float32
    again = cli("run", "--model", "mean", "--dataset", "synthetic", "--folds", "syn1", "--out", str(tmp_path / "r2"),
                "--save-models", str(models))
    assert again.exit_code == 2 and "bundle folder" in again.stderr and "already exists" in again.stderr
