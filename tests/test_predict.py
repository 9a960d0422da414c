"""``stbench predict`` on the committed her2st_mini fixture: a bundle trained on C2-C5 applied to C6
reproduces the leave-C6-out fold of ``stbench run`` (predictions and per-gene Pearson), the AnnData draws
with scanpy and squidpy, ``--grid-um`` tiles only the tissue, pixel sizes are checked and resampled, and
bad input is one line on stderr with exit code 2 and nothing written."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FIXTURE_CATALOG, FIXTURES

CAT = ("--catalog", str(FIXTURE_CATALOG))
TINY_HECLIP = ["encoder=test_efficientnet", "pretrained=false", "epochs=1", "batch_size=16", "input_px=32", "top_k=5"]
SPOTS = 30


def invoke(*args: str):
    from stbench.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def c6_files(root):
    data = root / "data" / "her2st_mini"
    (jpeg,) = (data / "ST-imgs" / "C" / "C6").glob("*.jpg")
    return jpeg, data / "ST-spotfiles" / "C6_selection.tsv"


def train(out, model, options=()):
    opts = [a for o in options for a in ("-o", o)]
    result = invoke(*CAT, "train", "--model", model, "--dataset", "her2st_mini_HVG", "--slides", "C2,C3,C4,C5",
                    *opts, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def plugins():
    from stbench.plugins import get_plugin_manager

    return get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)], env={})


@pytest.fixture(scope="module")
def c6_fold(her2st_mini_env, tmp_path_factory):
    """A heclip bundle trained on C2-C5, `stbench predict` of C6 with it, and `stbench run --folds C6` with
    the same options and seed; each under one torch thread (training repeats bit for bit per thread count).
    Both folds are prepared first: preparing expression (Harmony) can leave the process at more threads."""
    import torch

    from stbench.dataset import Fold

    dataset = plugins().datasets.get("her2st_mini_HVG")
    for fold in (dataset.folds("C6")[0], Fold("train", ("C2", "C3", "C4", "C5"), ())):
        dataset.prepare(fold, "strict")
    tmp = tmp_path_factory.mktemp("predict")
    jpeg, spots = c6_files(her2st_mini_env)
    out = tmp / "c6.h5ad"
    opts = [a for o in TINY_HECLIP for a in ("-o", o)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bundle = train(tmp / "bundle", "heclip", TINY_HECLIP)
        torch.set_num_threads(1)
        predicted = invoke("predict", str(bundle), "--image", str(jpeg), "--positions", str(spots), "--out", str(out))
        assert predicted.exit_code == 0, predicted.output
        torch.set_num_threads(1)
        ran = invoke(*CAT, "run", "--model", "heclip", "--dataset", "her2st_mini_HVG", "--folds", "C6", *opts,
                     "--out", str(tmp / "res"), "--no-predictions")
        assert ran.exit_code == 0, ran.output
    finally:
        torch.set_num_threads(threads)
    (results,) = (tmp / "res" / "heclip").glob("*.json")
    return {"bundle": bundle, "out": out, "results": results, "jpeg": jpeg, "spots": spots}


@pytest.fixture(scope="module")
def mean_bundle(her2st_mini_env, tmp_path_factory):
    return train(tmp_path_factory.mktemp("mean") / "bundle", "mean")


def test_predict_reproduces_the_runs_fold(c6_fold):
    import anndata

    from stbench.bundle import load_bundle
    from stbench.eval.metrics import pearson
    from stbench.report.results import load_result

    adata = anndata.read_h5ad(c6_fold["out"])
    pm = plugins()
    bundle = load_bundle(c6_fold["bundle"], pm)
    assert adata.shape == (SPOTS, len(bundle.genes)) and list(adata.var_names) == bundle.genes
    assert adata.X.dtype == np.float32
    spots = pd.read_csv(c6_fold["spots"], sep="\t")
    assert list(adata.obs_names) == [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
    np.testing.assert_array_equal(adata.obsm["spatial"], spots[["pixel_x", "pixel_y"]].to_numpy(float))
    assert list(adata.obs["array_col"]) == list(spots["x"]) and list(adata.obs["array_row"]) == list(spots["y"])
    info = adata.uns["stbench"]
    assert info["model"] == "heclip" and list(info["training_slides"]) == ["C2", "C3", "C4", "C5"]
    assert info["pixel_size_source"].startswith("estimated from the spot pitch") and not info["resampled"]

    # the run's own prepared query slide, fed to the bundle's model: the same predictions, spot for spot
    dataset = pm.datasets.get("her2st_mini_HVG")
    prepared = dataset.prepare(dataset.folds("C6")[0], "strict")
    (query,) = prepared.queries
    rows = adata.obs_names.get_indexer(query.barcodes)
    assert sorted(rows) == list(range(SPOTS))
    np.testing.assert_array_equal(adata.X[rows], np.asarray(bundle.model.predict(query), dtype=np.float32))

    # scored against C6's measured expression: the per-gene Pearson `stbench run --folds C6` reports
    result = load_result(c6_fold["results"])
    assert result.genes(0) == bundle.genes and result.folds[0]["query"] == "C6"
    ours, theirs = pearson(prepared.truth["C6"], adata.X[rows]), result.per_gene(0, "pearson")
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, equal_nan=True)
    assert np.nanmean(ours) == pytest.approx(result.summary["pearson"]["mean"], abs=1e-7)


def test_a_tiled_tiff_gives_the_same_predictions(c6_fold, tmp_path):
    """The same pixels as a tiled TIFF (read by window, tile by tile): the same patches and predictions."""
    import anndata
    import tifffile

    pixels = np.asarray(Image.open(c6_fold["jpeg"]).convert("RGB"))
    tiff = tmp_path / "C6.tif"
    tifffile.imwrite(tiff, pixels, tile=(256, 256), photometric="rgb", compression="zlib")
    out = tmp_path / "tiff.h5ad"
    result = invoke("predict", str(c6_fold["bundle"]), "--image", str(tiff), "--positions", str(c6_fold["spots"]),
                    "--library-id", "C6", "--out", str(out))
    assert result.exit_code == 0, result.output
    got, want = anndata.read_h5ad(out), anndata.read_h5ad(c6_fold["out"])
    assert list(got.uns["spatial"]) == ["C6"] and list(got.obs_names) == list(want.obs_names)
    np.testing.assert_array_equal(got.X, want.X)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_scanpy_and_squidpy_draw_the_predictions(c6_fold):
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq
    from matplotlib.collections import Collection
    from matplotlib.image import AxesImage

    adata = anndata.read_h5ad(c6_fold["out"])
    (library_id,) = adata.uns["spatial"]
    lib = adata.uns["spatial"][library_id]
    assert set(lib["images"]) == {"hires", "lowres"}
    assert set(lib["scalefactors"]) == {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"}
    h, w = lib["images"]["lowres"].shape[:2]
    assert max(h, w) <= 600 and (adata.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"] <= [w, h]).all()
    gene = adata.var_names[int(np.argmax(adata.X.std(axis=0)))]

    def drawn(axes):
        ax = axes[0] if isinstance(axes, (list, np.ndarray)) else axes
        assert any(isinstance(a, AxesImage) for a in ax.get_images()), "no tissue image"
        spots = [max(len(c.get_offsets()), len(c.get_paths())) for c in ax.collections if isinstance(c, Collection)]
        assert SPOTS in spots, f"no collection of {SPOTS} spots: {spots}"

    drawn(sc.pl.spatial(adata, color=gene, library_id=library_id, show=False))
    plt.close("all")
    sq.pl.spatial_scatter(adata, color=gene)
    drawn(plt.gcf().axes)
    plt.close("all")


def test_grid_tiles_only_the_tissue(her2st_mini_env, mean_bundle, tmp_path):
    jpeg, _ = c6_files(her2st_mini_env)
    tissue = np.asarray(Image.open(jpeg).convert("RGB"))
    pad = 600
    padded = np.pad(tissue, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
    image = tmp_path / "padded.png"
    Image.fromarray(padded).save(image)
    out = tmp_path / "grid.h5ad"
    result = invoke("predict", str(mean_bundle), "--image", str(image), "--grid-um", "400", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "--pixel-size" in result.stderr and "assuming the bundle's" in result.stderr

    import anndata

    adata = anndata.read_h5ad(out)
    info = adata.uns["stbench"]
    h, w = padded.shape[:2]
    xy = adata.obsm["spatial"]
    assert 0 < adata.n_obs < info["grid_spots"] and adata.n_obs == info["tissue_spots"]
    assert ((xy >= 0) & (xy < [w, h])).all()
    on_tissue = (xy >= pad) & (xy < [pad + tissue.shape[1], pad + tissue.shape[0]])
    assert on_tissue.all(), "a spot on the white border"
    step = 400 / info["pixel_size_um"]
    assert info["pixel_size_source"] == "assumed equal to the bundle's"
    np.testing.assert_allclose(np.diff(np.unique(xy[:, 0])), step)
    assert list(adata.obs_names) == [f"{c}x{r}" for c, r in zip(adata.obs["array_col"], adata.obs["array_row"])]
    assert adata.X.shape[1] > 0 and np.isfinite(adata.X).all()


def downscaled_copy(root, tmp_path, factor=3):
    jpeg, spots = c6_files(root)
    with Image.open(jpeg) as im:
        small = im.convert("RGB").resize((im.width // factor, im.height // factor), Image.Resampling.BILINEAR)
    image = tmp_path / "small.png"
    small.save(image)
    table = pd.read_csv(spots, sep="\t")
    table["pixel_x"] /= factor
    table["pixel_y"] /= factor
    positions = tmp_path / "small_selection.tsv"
    table.to_csv(positions, sep="\t", index=False)
    return image, positions


def test_a_slide_at_another_resolution_needs_pixel_size_and_is_resampled(her2st_mini_env, mean_bundle, tmp_path):
    from stbench.bundle import read_manifest
    from stbench.predict.slide import slide_key

    image, positions = downscaled_copy(her2st_mini_env, tmp_path)
    out = tmp_path / "small.h5ad"
    refused = invoke("predict", str(mean_bundle), "--image", str(image), "--positions", str(positions), "--out", str(out))
    assert_one_line_error(refused, out, "more than 2x off the bundle's")
    assert "--pixel-size" in refused.stderr

    native = 0.6693675419607265  # C6's pixel size, estimated from its spot pitch (200 um per array step)
    done = invoke("predict", str(mean_bundle), "--image", str(image), "--positions", str(positions),
                  "--pixel-size", str(3 * native), "--out", str(out))
    assert done.exit_code == 0, done.output
    import anndata

    adata = anndata.read_h5ad(out)
    bundle_um = read_manifest(mean_bundle)["input"]["pixel_size_um"]
    assert adata.uns["stbench"]["resampled"] and adata.n_obs == SPOTS
    (patch_file,) = (her2st_mini_env / "cache" / "patches" / slide_key(image)).rglob("*.h5")
    assert patch_file.name == f"256px-{bundle_um:.3f}um.h5"
    with h5py.File(patch_file, "r") as f:
        crop = int(f.attrs["crop_px"])
        assert f["images"].shape == (SPOTS, 256, 256, 3)
    assert crop == round(256 * bundle_um / (3 * native)) and crop != 256
    assert adata.uns["stbench"]["crop_px"] == crop


def assert_one_line_error(result, out, text):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stbench: error: "), result.stderr
    assert text in lines[0], lines[0]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def bad_inputs(root, bundle, tmp_path):
    """name -> (arguments after the bundle, expected text); builds the damaged files."""
    jpeg, spots = c6_files(root)
    text_image = tmp_path / "not_an_image.jpg"
    text_image.write_text("not an image")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[:40_000])
    table = pd.read_csv(spots, sep="\t")
    far, most = table.copy(), table.copy()
    far[["pixel_x", "pixel_y"]] += 50_000
    most.loc[most.index[:20], "pixel_x"] += 50_000
    for name, t in (("far.tsv", far), ("most.tsv", most)):
        t.to_csv(tmp_path / name, sep="\t", index=False)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("a,b,c\n1,2,3\n")
    nonnumeric = tmp_path / "nonnumeric.csv"
    nonnumeric.write_text("x,y\n10,20\nabc,30\n")
    img, pos = ("--image", str(jpeg)), ("--positions", str(spots))
    return {
        "unreadable image": ([str(bundle), "--image", str(text_image), *pos], "cannot read image"),
        "truncated image": ([str(bundle), "--image", str(cut), *pos], "cannot read image"),
        "all outside": ([str(bundle), *img, "--positions", str(tmp_path / "far.tsv")], "30 of 30 spots"),
        "most outside": ([str(bundle), *img, "--positions", str(tmp_path / "most.tsv")], "20 of 30 spots"),
        "neither": ([str(bundle), *img], "exactly one of --positions"),
        "both": ([str(bundle), *img, *pos, "--grid-um", "100"], "exactly one of --positions"),
        "unparseable positions": ([str(bundle), *img, "--positions", str(garbage)], "no pixel_x,pixel_y or x,y"),
        "non-numeric positions": ([str(bundle), *img, "--positions", str(nonnumeric)], "non-numeric"),
        "missing bundle": ([str(tmp_path / "nobundle"), *img, *pos], "does not exist"),
        "bad grid": ([str(bundle), *img, "--grid-um", "-5"], "must be a positive number"),
        "bad pixel size": ([str(bundle), *img, *pos, "--pixel-size", "0"], "must be a positive number"),
        "bad library id": ([str(bundle), *img, *pos, "--library-id", "a/b"], "without '/'"),
    }


def test_bad_input_is_one_line_exit_2_nothing_written(her2st_mini_env, mean_bundle, tmp_path):
    cases = bad_inputs(her2st_mini_env, mean_bundle, tmp_path)
    for name, (args, text) in cases.items():
        out = tmp_path / "out" / f"{name.replace(' ', '_')}.h5ad"
        assert_one_line_error(invoke("predict", *args, "--out", str(out)), out, text)


def test_a_damaged_bundle_is_one_line(her2st_mini_env, mean_bundle, tmp_path):
    import shutil

    jpeg, spots = c6_files(her2st_mini_env)
    for damage, text in (("weights", "does not match its manifest"), ("manifest", "unreadable")):
        bundle = tmp_path / damage
        shutil.copytree(mean_bundle, bundle)
        if damage == "weights":
            (bundle / "model.safetensors").write_bytes(b"\0" * 16)
        else:
            (bundle / "manifest.json").write_text("{ not json")
        out = tmp_path / f"{damage}.h5ad"
        result = invoke("predict", str(bundle), "--image", str(jpeg), "--positions", str(spots), "--out", str(out))
        assert_one_line_error(result, out, text)


def test_python_api_takes_arrays_and_dataframes(her2st_mini_env, tmp_path):
    from stbench.bundle import load_bundle
    from stbench.predict import predict_slide

    bundle = load_bundle(train(tmp_path / "rk", "random-k", ["k=3"]), plugins())
    jpeg, spots = c6_files(her2st_mini_env)
    table = pd.read_csv(spots, sep="\t")
    from_file = predict_slide(bundle, jpeg, positions=spots)
    from_frame = predict_slide(bundle, jpeg, positions=table, library_id="C6")
    assert list(from_frame.uns["spatial"]) == ["C6"] and list(from_file.uns["spatial"]) == [jpeg.stem]
    np.testing.assert_array_equal(from_frame.X, from_file.X)
    assert list(from_frame.obs_names) == list(from_file.obs_names)
    xy = table[["pixel_x", "pixel_y"]].to_numpy(float)
    from_array = predict_slide(bundle, jpeg, positions=xy, pixel_size_um=0.67)
    assert from_array.n_obs == SPOTS and "array_row" not in from_array.obs
    r = np.floor(xy + 0.5).astype(int)
    assert list(from_array.obs_names) == [f"x{x}_y{y}" for x, y in r]
    assert from_array.uns["stbench"]["grid"] == "coordinate ranks"
    assert from_array.uns["stbench"]["pixel_size_source"] == "given (--pixel-size)"
    with pytest.raises(Exception, match="exactly one of"):
        predict_slide(bundle, jpeg)


def test_positions_formats(tmp_path):
    from stbench.predict import read_positions

    sr2 = read_positions(FIXTURES / "visium_sr2" / "spatial" / "tissue_positions.csv")
    raw = pd.read_csv(FIXTURES / "visium_sr2" / "spatial" / "tissue_positions.csv")
    tissue = raw[raw["in_tissue"] == 1]
    assert sr2.platform == "spaceranger" and list(sr2.barcodes) == list(tissue["barcode"])
    np.testing.assert_array_equal(sr2.coords, tissue[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
    np.testing.assert_array_equal(sr2.grid, tissue[["array_col", "array_row"]].to_numpy())
    from stbench.data.readers.geometry import estimate_pixel_size

    # the Visium reader's estimate: all positions (in and off tissue), 100 um per 2 array_col
    assert sr2.um_per_px == estimate_pixel_size(raw[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float),
                                                raw["array_row"], raw["array_col"], col_step=2, um_per_step=100.0)
    sr1 = read_positions(FIXTURES / "visium_sr1" / "spatial" / "tissue_positions_list.csv")
    assert sr1.platform == "spaceranger" and len(sr1) > 0 and sr1.um_per_px is not None
    renamed = tmp_path / "spots.csv"  # a Space Ranger file under another name: still recognised
    renamed.write_bytes((FIXTURES / "visium_sr1" / "spatial" / "tissue_positions_list.csv").read_bytes())
    assert list(read_positions(renamed).barcodes) == list(sr1.barcodes)

    selection = tmp_path / "S_selection.tsv"
    selection.write_text("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
                         "1\t2\t1.1\t2.0\t100.0\t200.0\t1\n2\t2\t2.0\t2.0\t390.0\t200.0\t1\n3\t2\t3\t2\t680\t200\t0\n")
    st = read_positions(selection)
    assert st.platform == "st" and list(st.barcodes) == ["1x2", "2x2"] and st.um_per_px == pytest.approx(200 / 290)
    named = tmp_path / "named.csv"
    named.write_text("id,x,y\na,10.4,20.6\nb,30,40\n")
    p = read_positions(named)
    assert p.grid is None and p.um_per_px is None and list(p.barcodes) == ["a", "b"]
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("x,y\n10.4,20.6\n30,40\n")
    assert list(read_positions(unnamed).barcodes) == ["x10_y21", "x30_y40"]
