"""The Python API (docs/api.md): run on catalogue names and on AnnData slides, the strict protocol on
in-memory data, train/save/load, evaluate against the numbers runs report; AnnData in the scanpy layout."""
from __future__ import annotations

import json
import warnings

import anndata
import numpy as np
import pytest

import stbench
from anndata_slides import write_slides
from conftest import FIXTURES


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def memory_slides(folder, n=3):
    """AnnData slides in memory whose images are files named in uns['stbench']."""
    names = tuple(f"s{i + 1}" for i in range(n))
    write_slides(folder, slides=names)
    slides = {}
    for s in names:
        a = anndata.read_h5ad(folder / f"{s}.h5ad")
        a.uns["stbench"]["image_path"] = str(folder / f"{s}.png")
        slides[s] = a
    return slides


def test_run_on_a_catalogue_name_is_the_cli_run(cli, tmp_path, cache):
    result = stbench.run("random-k", "synthetic", folds="syn1,syn2", k=7)
    assert cli("run", "--model", "random-k", "--dataset", "synthetic", "--folds", "syn1,syn2", "-o", "k=7",
               "--out", str(tmp_path / "o")).exit_code == 0
    (path,) = (tmp_path / "o" / "random-k").glob("*.json")
    written = json.loads(path.read_text())
    assert result.config_hash == written["config_hash"]
    assert result.summary["pearson"]["mean"] == pytest.approx(written["summary"]["pearson"]["mean"], abs=1e-7)
    assert result.options == {"k": 7}


def test_run_on_anndata_slides_holds_the_strict_protocol(tmp_path, cache):
    slides = memory_slides(tmp_path / "s")
    result = stbench.run("random-k", slides, n_per_slide=10, k=5)
    assert [f["query"] for f in result.folds] == ["s1", "s2", "s3"] and result.dataset.startswith("memory-")
    genes = {f["query"]: result.genes(i) for i, f in enumerate(result.folds)}
    # scramble the query slide's counts: under strict, the genes chosen for its fold do not move
    changed = dict(slides)
    other = changed["s3"].copy()
    other.X = other.X[:, ::-1]
    changed["s3"] = other
    strict = stbench.run("random-k", changed, folds="s3", n_per_slide=10, k=5)
    assert strict.genes(0) == genes["s3"]
    paper = stbench.run("random-k", changed, folds="s3", protocol="paper", n_per_slide=10, k=5)
    base = stbench.run("random-k", slides, folds="s3", protocol="paper", n_per_slide=10, k=5)
    assert paper.genes(0) != base.genes(0)  # the paper protocol selects genes with the query included


def test_train_save_load_keeps_the_model(tmp_path, cache):
    slides = memory_slides(tmp_path / "s")
    trained = stbench.train("random-k", {k: slides[k] for k in ("s1", "s2")}, n_per_slide=10, k=5)
    assert trained.manifest["training"]["slides"] == ["s1", "s2"] and len(trained.genes) >= 10
    trained.save(tmp_path / "bundle")
    again = stbench.load(tmp_path / "bundle")
    assert again.genes == trained.genes and again.manifest["training"] == trained.manifest["training"]
    with pytest.raises(stbench.StbenchError, match="already exists"):
        trained.save(tmp_path / "bundle")


def test_evaluate_gives_the_numbers_runs_report(tmp_path, cache):
    import h5py

    result = stbench.run("random-k", "synthetic", folds="syn1,syn2", out=tmp_path / "o")
    (pred_file,) = (tmp_path / "o" / "random-k").glob("*.predictions.h5")
    true_parts, pred_parts = [], []
    with h5py.File(pred_file, "r") as f:
        for key in sorted(f["slides"]):
            g = f["slides"][key]
            genes = [x.decode() for x in g["genes"][()]]
            obs = {"slide": [g.attrs["query"]] * len(g["barcodes"])}
            names = [x.decode() for x in g["barcodes"][()]]
            true_parts.append(anndata.AnnData(g["true"][()], obs=obs, var={"g": genes}))
            pred_parts.append(anndata.AnnData(g["pred"][()], obs=obs, var={"g": genes}))
            for part in (true_parts[-1], pred_parts[-1]):
                part.obs_names, part.var_names = names, genes
                part.obsm["spatial"] = g["coords"][()]
    truth, pred = anndata.concat(true_parts), anndata.concat(pred_parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_gene, per_slide = stbench.evaluate(truth, pred)
    assert list(per_slide["slide"]) == ["syn1", "syn2"]
    for i, fold in enumerate(result.folds):
        mine = per_gene[per_gene["slide"] == fold["query"]]
        assert list(mine["gene"]) == result.genes(i)
        np.testing.assert_allclose(mine["pearson"].to_numpy(), result.per_gene(i, "pearson"), atol=1e-5, equal_nan=True)
        row = per_slide[per_slide["slide"] == fold["query"]].iloc[0]
        assert row["hit@2"] == pytest.approx(fold["scores"]["hit@2"]["value"], abs=1e-6)
        assert row["pearson_hvg@50"] == pytest.approx(fold["scores"]["pearson_hvg@50"]["value"], abs=1e-5)
    with pytest.raises(stbench.StbenchError, match="share 0 spot"):
        stbench.evaluate(truth, pred[:0])


# ------------------------------------------------------------------------------- scanpy's own layout


@pytest.fixture
def scanpy_slides(tmp_path):
    """The repository's Space Ranger 1.x fixture read by scanpy.read_visium (twice, as two libraries) and
    saved as .h5ad (images and scale factors in uns['spatial'], coordinates in obsm['spatial'])."""
    import scanpy as sc

    folder = tmp_path / "h5ad"
    folder.mkdir()
    for name in ("visium_sr1", "visium_sr1_copy"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = sc.read_visium(FIXTURES / "visium_sr1", library_id=name)
        adata.var_names_make_unique()
        adata.write_h5ad(folder / f"{name}.h5ad")
    return folder


def test_the_anndata_reader_takes_scanpys_layout_and_cuts_patches_from_its_hires_image(tmp_path, cache, scanpy_slides):
    from PIL import Image

    from stbench.data.readers.anndata_reader import AnnDataReader
    from stbench.data.patches import PatchSpec, ensure_patches, open_patches
    from stbench.testing import check_reader

    with pytest.warns(UserWarning, match=r"patches will be cut from the downsampled uns\['spatial'\]\['visium_sr1'\] hires"):
        adata = check_reader(AnnDataReader(), scanpy_slides, "visium_sr1")
    scale = adata.uns["stbench"]["image_scale"]
    factors = json.loads((FIXTURES / "visium_sr1" / "spatial" / "scalefactors_json.json").read_text())
    assert scale == pytest.approx(factors["tissue_hires_scalef"]) and adata.n_obs == 39
    out = ensure_patches(adata.uns["stbench"]["image_path"], adata.obsm["spatial"], adata.obs_names,
                         adata.obs[["array_col", "array_row"]].to_numpy(), cache / "p.h5", PatchSpec(32),
                         image_scale=scale)
    patches = open_patches(out)
    hires = np.asarray(Image.open(FIXTURES / "visium_sr1" / "spatial" / "tissue_hires_image.png").convert("RGB"))
    side = int(np.floor(32 * scale + 0.5))
    x, y = np.floor(np.asarray(adata.obsm["spatial"][0]) * scale + 0.5).astype(int)
    crop = hires[y - side // 2:y - side // 2 + side, x - side // 2:x - side // 2 + side]
    want = np.asarray(Image.fromarray(crop).resize((32, 32), Image.BILINEAR))
    assert np.abs(patches["images"][0].astype(int) - want.astype(int)).max() <= 1
    assert patches["images"][0].std() > 10  # real tissue, not a blank image


def test_a_catalogue_of_scanpy_h5ad_files_runs_and_image_takes_slide(cli, tmp_path, cache, scanpy_slides):
    catalogue = tmp_path / "my.toml"
    catalogue.write_text(f'''[visium_h5ad]
reader = "anndata"
slides = ["visium_sr1", "visium_sr1_copy"]
query = ["visium_sr1_copy"]
split = "all"
genes = {{ set = "hvg", n_per_slide = 50 }}
patch_px = 32
root = "{scanpy_slides}"
''')
    ran = cli("--catalog", str(catalogue), "run", "--model", "mean", "--dataset", "visium_h5ad", "--out", str(tmp_path / "o"))
    assert ran.exit_code == 0, ran.output
    # {slide} in params.image: one image file per slide, named after it
    from stbench.data.readers.anndata_reader import AnnDataReader

    folder = write_slides(tmp_path / "plain", slides=("a1", "a2"))
    for s in ("a1", "a2"):
        (folder / f"{s}.png").rename(folder / f"he_{s}.png")
        adata = anndata.read_h5ad(folder / f"{s}.h5ad")
        del adata.uns["stbench"]
        adata.write_h5ad(folder / f"{s}.h5ad")
    read = AnnDataReader().read_slide(folder, "a2", params={"image": "he_{slide}.png"})
    assert read.uns["stbench"]["image_path"] == str(folder / "he_a2.png")


def test_a_trained_model_predicts_an_anndata_slide_and_an_image_file(tmp_path, cache):
    import pandas as pd

    slides = memory_slides(tmp_path / "s")
    trained = stbench.train("knn", {k: slides[k] for k in ("s1", "s2")}, n_per_slide=10, k=5, input_px=64)
    query = slides["s3"]
    pred = trained.predict(query)
    assert list(pred.obs_names) == list(query.obs_names) and list(pred.var_names) == trained.genes
    np.testing.assert_allclose(pred.obsm["spatial"], query.obsm["spatial"])
    # the same numbers as the model on the slide the run would prepare
    result = stbench.run("knn", slides, folds="s3", n_per_slide=10, k=5, input_px=64, out=tmp_path / "o")
    import h5py

    (pred_file,) = (tmp_path / "o" / "knn").glob("*.predictions.h5")
    with h5py.File(pred_file, "r") as f:
        run_pred = f["slides/000/pred"][()]
    np.testing.assert_allclose(np.asarray(pred.X), run_pred, rtol=1e-3, atol=1e-3)
    assert result.genes(0) == trained.genes
    # an image file with positions gives the same
    spots = pd.DataFrame({"barcode": list(query.obs_names), "x": query.obsm["spatial"][:, 0],
                          "y": query.obsm["spatial"][:, 1]})
    again = trained.predict(str(tmp_path / "s" / "s3.png"), positions=spots)
    np.testing.assert_allclose(np.asarray(again.X), np.asarray(pred.X), rtol=1e-6)


def test_the_example_script_runs_offline(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), "--out", str(tmp_path / "ex")],
                         capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("STBENCH_")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "predicted 30 spots x" in out.stdout and (tmp_path / "ex" / "C6_prediction.png").stat().st_size > 5000
