"""The Visium fixtures in tests/data (real her2st pixels and counts in Space Ranger layouts): visium_sr1
(1.x: headerless tissue_positions_list.csv, filtered_feature_bc_matrix.h5) and visium_sr2 (2.x:
tissue_positions.csv with a header, gzipped filtered_feature_bc_matrix/ folder). No full-resolution image:
the reader falls back to the hires PNG, and the patch cache cuts patches from it."""
import gzip
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from conftest import FIXTURE_CATALOG, FIXTURES, SHARED_DATA, VISIUM_SR1, VISIUM_SR2

POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]

# name -> (folder, her2st section, grid spots, in tissue, genes, window (w, h) px, hires long side, um/px of the
#          section from its 200 um ST pitch (make_fixtures.py prints it))
SAMPLES = {
    "visium_sr1": (VISIUM_SR1, "C5", 52, 39, 3000, (1300, 1150), 272, 0.6819),
    "visium_sr2": (VISIUM_SR2, "C6", 51, 38, 3000, (1250, 1200), 250, 0.6836),
}


def positions_of(folder):
    """The positions file read independently of the reader: 1.x has no header, 2.x has one."""
    v1 = folder / "spatial" / "tissue_positions_list.csv"
    if v1.exists():
        assert not v1.read_text().startswith("barcode")
        return pd.read_csv(v1, header=None, names=POS_COLS), v1
    v2 = folder / "spatial" / "tissue_positions.csv"
    assert v2.read_text().splitlines()[0] == ",".join(POS_COLS)
    return pd.read_csv(v2), v2


def counts_of(folder):
    """(barcodes, gene ids, gene symbols, barcodes x genes dense counts) read with h5py / scipy only."""
    h5 = folder / "filtered_feature_bc_matrix.h5"
    if h5.exists():
        with h5py.File(h5, "r") as f:
            m = f["matrix"]
            shape = tuple(m["shape"][:])
            x = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape)  # features x barcodes
            assert set(m["features"]["feature_type"][:]) == {b"Gene Expression"}
            assert f.attrs["software_version"] == "spaceranger-1.0.0" and int(f.attrs["version"][0]) == 2
            return ([b.decode() for b in m["barcodes"][:]], [i.decode() for i in m["features"]["id"][:]],
                    [n.decode() for n in m["features"]["name"][:]], x.T.toarray())
    mtx = folder / "filtered_feature_bc_matrix"
    with gzip.open(mtx / "matrix.mtx.gz", "rb") as fh:
        x = scipy.io.mmread(fh)
    barcodes = gzip.decompress((mtx / "barcodes.tsv.gz").read_bytes()).decode().split()
    features = [line.split("\t") for line in gzip.decompress((mtx / "features.tsv.gz").read_bytes()).decode().splitlines()]
    assert {f[2] for f in features} == {"Gene Expression"}
    return barcodes, [f[0] for f in features], [f[1] for f in features], sp.csr_matrix(x).T.toarray()


def median_pitch(pos: pd.DataFrame) -> float:
    """Median distance (px) of spots on one array_row two array_col apart: 100 um on Visium."""
    pairs = pos.merge(pos.assign(array_col=pos["array_col"] - 2), on=["array_row", "array_col"], suffixes=("", "_n"))
    return float(np.median(np.hypot(pairs["pxl_col_in_fullres_n"] - pairs["pxl_col_in_fullres"],
                                    pairs["pxl_row_in_fullres_n"] - pairs["pxl_row_in_fullres"])))


def read(name):
    from stbench.data.readers.visium import VisiumReader

    with pytest.warns(UserWarning, match="downsampled"):
        return VisiumReader().read_slide(FIXTURES, name)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_both_space_ranger_layouts_read_with_the_visium_reader(name):
    folder, _, n_grid, n_tissue, n_genes, window, hires_long, um_per_px = SAMPLES[name]
    pos, pos_path = positions_of(folder)
    barcodes, ids, symbols, counts = counts_of(folder)
    factors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    a = read(name)

    # spots: every in-tissue barcode, none of the others; counts exactly as stored
    assert len(pos) == n_grid and int(pos["in_tissue"].sum()) == n_tissue and 0 < n_tissue < n_grid
    assert a.shape == (n_tissue, n_genes) == counts.shape
    assert list(a.obs_names) == barcodes == sorted(pos.loc[pos["in_tissue"] == 1, "barcode"])
    assert not set(a.obs_names) & set(pos.loc[pos["in_tissue"] == 0, "barcode"])
    assert all(len(b) == 18 and b.endswith("-1") and set(b[:16]) <= set("ACGT") for b in barcodes)
    np.testing.assert_array_equal(a.X.toarray(), counts)
    assert list(a.var_names) == symbols and list(a.var["gene_ids"]) == ids
    assert "ERBB2" in symbols and a.uns["stbench"]["n_zero_count_spots"] == 0
    # geometry: x = pxl_col_in_fullres, y = pxl_row_in_fullres (true 10x column order)
    p = pos.set_index("barcode").loc[a.obs_names]
    np.testing.assert_array_equal(a.obsm["spatial"], p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
    np.testing.assert_array_equal(a.obs["array_row"], p["array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], p["array_col"])
    assert ((pos["array_row"] + pos["array_col"]) % 2 == 0).all()  # Visium's hexagonal addressing

    meta = a.uns["stbench"]
    assert meta["image_path"] == str(folder / "spatial" / "tissue_hires_image.png")
    assert meta["positions_format"].startswith("spaceranger-1" if pos_path.name.endswith("_list.csv") else "spaceranger-2")
    assert meta["n_spots_in_tissue"] == n_tissue and (a.obs["slide"] == name).all()
    # scale factors: as Space Ranger defines them, from the window's long side
    scale = hires_long / max(window)
    assert meta["image_scale"] == factors["tissue_hires_scalef"] == pytest.approx(scale, rel=1e-12)
    hires = Image.open(folder / "spatial" / "tissue_hires_image.png")
    lowres = Image.open(folder / "spatial" / "tissue_lowres_image.png")
    assert hires.mode == "RGB" and hires.size == tuple(round(v * scale) for v in window)
    assert lowres.size == tuple(round(v * factors["tissue_lowres_scalef"]) for v in window)
    # pixel size: 100 um per spot pitch, the her2st section's own um/px; spot 65 um, fiducial 105 um
    assert meta["pixel_size_um"] == pytest.approx(100 / median_pitch(pos), rel=1e-9)
    assert meta["pixel_size_um"] == pytest.approx(um_per_px, rel=0.01)
    assert factors["spot_diameter_fullres"] * um_per_px == pytest.approx(65.0, rel=1e-3)
    assert factors["fiducial_diameter_fullres"] * um_per_px == pytest.approx(105.0, rel=1e-3)
    rows = pos.sort_values(["array_col", "array_row"])
    step_y = np.median(np.diff(sorted(rows.groupby("array_row")["pxl_row_in_fullres"].median())))
    assert step_y == pytest.approx(median_pitch(pos) * math.sqrt(3) / 2, abs=2)  # rows of a hexagonal grid
    # in-tissue spots sit on darker (stained) hires pixels than off-tissue ones
    gray = np.asarray(hires.convert("L"), dtype=float)
    xy = np.round(pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * scale).astype(int)
    spot_gray = np.array([gray[y - 5:y + 6, x - 5:x + 6].mean() for x, y in xy])
    tissue = pos["in_tissue"].to_numpy() == 1
    assert np.median(spot_gray[tissue]) < np.median(spot_gray[~tissue]) - 30


def test_the_two_layouts_differ_only_where_space_ranger_1_and_2_differ():
    (a1, p1), (a2, p2) = ((read(n), positions_of(SAMPLES[n][0])[1]) for n in SAMPLES)
    assert p1.name == "tissue_positions_list.csv" and p2.name == "tissue_positions.csv"
    assert (VISIUM_SR1 / "filtered_feature_bc_matrix.h5").is_file()
    assert not (VISIUM_SR1 / "filtered_feature_bc_matrix").exists()
    assert sorted(p.name for p in (VISIUM_SR2 / "filtered_feature_bc_matrix").iterdir()) == [
        "barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"]
    assert not (VISIUM_SR2 / "filtered_feature_bc_matrix.h5").exists()
    assert "feature_types" in a1.var and "feature_types" in a2.var
    assert len(set(a1.var_names) & set(a2.var_names)) > 2000  # two sections of one patient share most genes


@pytest.mark.filterwarnings("ignore:visium slide:UserWarning")  # the hires fallback, tested above
@pytest.mark.parametrize("name", list(SAMPLES))
def test_cached_patches_are_the_hires_crops_resized(visium_mini_env, name):
    """Through the catalogue's patch cache: each patch is the ``round(224 * scale)`` px crop of the hires PNG
    whose top-left is ``round(centre * scale) - side // 2``, resized bilinearly to 224 px (patch_cache.py)."""
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)], env={}).datasets.get("visium_mini")
    assert ds.entry.patch_px == 224
    folder, _, _, n_tissue = SAMPLES[name][:4]
    scale = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())["tissue_hires_scalef"]
    path = ds.patches(name)
    assert path == visium_mini_env / "cache" / "patches" / "visium_mini" / name / "224px-native.h5"
    with h5py.File(path, "r") as f:
        images = f["images"][:]
        coords = f["coords"][:]
        attrs = dict(f.attrs)
    assert images.shape == (n_tissue, 224, 224, 3)
    side = int(math.floor(224 * scale + 0.5))
    assert attrs["image_scale"] == pytest.approx(scale) and attrs["crop_px"] == side
    assert int(attrs["n_padded"]) == 0 and int(attrs["n_dropped"]) == 0
    hires = Image.open(folder / "spatial" / "tissue_hires_image.png").convert("RGB")
    for img, (x, y) in zip(images, coords):
        cx, cy = int(math.floor(x * scale + 0.5)), int(math.floor(y * scale + 0.5))
        box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
        want = np.asarray(hires.crop(box).resize((224, 224), Image.BILINEAR), dtype=np.int16)
        diff = np.abs(img.astype(np.int16) - want)
        assert diff.max() <= 2 and diff.mean() < 0.1
        assert img.std() > 15 and img.mean() < 215  # stained tissue, not background
    assert len({img.tobytes() for img in images}) == n_tissue


@pytest.mark.filterwarnings("ignore:visium slide:UserWarning")
def test_visium_mini_runs_end_to_end(visium_mini_env, cli, tmp_path):
    out = tmp_path / "res"
    result = cli("--catalog", str(FIXTURE_CATALOG), "run", "--model", "random-k", "--dataset", "visium_mini",
                 "--out", str(out), "--no-predictions")
    assert result.exit_code == 0, result.output
    (path,) = (out / "random-k").glob("visium_mini.strict.*.json")
    data = json.loads(path.read_text())
    assert [(f["query"], f["reference"], f["n_spots"]) for f in data["folds"]] == [
        ("visium_sr1", ["visium_sr2"], SAMPLES["visium_sr1"][3]), ("visium_sr2", ["visium_sr1"], SAMPLES["visium_sr2"][3])]
    assert all(50 <= f["n_genes"] <= 100 for f in data["folds"])  # top-100 HVGs of the one reference slide
    for metric in ("pearson", "rmse", "ssim", "hit@3"):
        assert math.isfinite(data["summary"][metric]["mean"]), metric


@pytest.mark.full_data
@pytest.mark.parametrize("name", list(SAMPLES))
def test_visium_count_rows_are_real_her2st_rows(name):
    """Every Visium spot's counts are one real count row of its her2st section (restricted to the fixture's
    genes); about four Visium spots share each ST spot (100 um vs 200 um pitch)."""
    folder, section = SAMPLES[name][:2]
    _, _, symbols, counts = counts_of(folder)
    full = pd.read_csv(SHARED_DATA / "her2st" / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    rows = {full.loc[spot, symbols].to_numpy().astype(np.int64).tobytes(): spot for spot in full.index}
    matched = [rows.get(r.astype(np.int64).tobytes()) for r in counts]
    assert None not in matched
    assert 3 <= len(matched) / len(set(matched)) <= 5
