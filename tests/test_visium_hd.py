"""The Visium HD reader on the committed fixture tests/data/visium_hd (real her2st pixels and thinned real
counts in Space Ranger 3's binned layout; written by tests/data/make_hd_fixture.py): both bin sizes read
against the files as 10x writes them (read here with pyarrow, h5py and tifffile only), the catalogue entry
fetched, prepared and run, the patch cache against crops of the full-resolution TIFF, and bad inputs."""
import json
import logging
import math
import shutil

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import tifffile
from conftest import FIXTURE_CATALOG, FIXTURES, SHARED_DATA, fetch_fixture

from stbench.data.readers.visium_hd import VisiumHDReader
from stbench.errors import DataError
from stbench.testing import check_reader

HD = FIXTURES / "visium_hd"
IMAGE = "{slide}/{slide}_tissue_image.tif"
SLIDES = {"hd_C2": HD / "hd_C2" / "outs", "hd_C3": HD / "hd_C3"}  # a raw spaceranger run; its outs/ copied
# (slide, bin um) -> (bins in the positions file, bins in tissue); make_hd_fixture.py prints them
BINS = {("hd_C2", 16): (168, 131), ("hd_C2", 8): (672, 505), ("hd_C3", 16): (168, 135), ("hd_C3", 8): (672, 502)}
GENES = 1000


def bin_dir(slide, bin_um):
    return SLIDES[slide] / "binned_outputs" / f"square_{bin_um:03d}um"


def read(slide, bin_um=16, folder=HD, **params):
    return VisiumHDReader().read_slide(folder, slide, params={"bin_um": bin_um, "image": IMAGE, **params})


def h5_counts(path):
    """(barcodes, gene ids, symbols, CSR barcodes x genes) with h5py only (10x HDF5: CSC features x barcodes)."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        x = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
        return ([b.decode() for b in m["barcodes"][:]], [i.decode() for i in m["features"]["id"][:]],
                [n.decode() for n in m["features"]["name"][:]], x.T.tocsr())


@pytest.mark.parametrize("slide, bin_um", list(BINS))
def test_both_bin_sizes_read_as_space_ranger_3_wrote_them(slide, bin_um):
    n_bins, n_tissue = BINS[(slide, bin_um)]
    folder = bin_dir(slide, bin_um)
    pos = pq.read_table(folder / "spatial" / "tissue_positions.parquet").to_pandas().set_index("barcode")
    factors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    barcodes, ids, symbols, counts = h5_counts(folder / "filtered_feature_bc_matrix.h5")
    a = read(slide, bin_um)

    # spots: the in-tissue bins, in the matrix's order, none of the others; counts sparse and as stored
    assert len(pos) == n_bins and int(pos["in_tissue"].sum()) == n_tissue < n_bins
    assert a.shape == (n_tissue, GENES) == counts.shape
    assert list(a.obs_names) == barcodes == sorted(pos.index[pos["in_tissue"] == 1])
    assert all(b.startswith(f"s_{bin_um:03d}um_") and b.endswith("-1") for b in barcodes)
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert (a.X != counts).nnz == 0
    assert list(a.var_names) == symbols and list(a.var["gene_ids"]) == ids and "ERBB2" in symbols
    # geometry: x = pxl_col_in_fullres, y = pxl_row_in_fullres, exactly the parquet's floats
    p = pos.loc[a.obs_names]
    np.testing.assert_array_equal(a.obsm["spatial"], p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    np.testing.assert_array_equal(a.obs["array_row"], p["array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], p["array_col"])
    assert (a.obs["slide"] == slide).all() and (a.obs["patient"] == slide).all()
    meta = a.uns["stbench"]
    assert meta["pixel_size_um"] == factors["microns_per_pixel"] and meta["bin_size_um"] == bin_um == factors["bin_size_um"]
    assert meta["image_path"] == str(HD / slide / f"{slide}_tissue_image.tif") and meta["image_scale"] == 1.0
    assert meta["n_spots_in_tissue"] == n_tissue and meta["reader"] == "visium-hd"
    # neighbouring bins are bin_um apart at microns_per_pixel
    right = p.reset_index().merge(p.reset_index().assign(array_col=p["array_col"].to_numpy() - 1),
                                  on=["array_row", "array_col"], suffixes=("", "_n"))
    step = np.hypot(right["pxl_col_in_fullres_n"] - right["pxl_col_in_fullres"],
                    right["pxl_row_in_fullres_n"] - right["pxl_row_in_fullres"])
    np.testing.assert_allclose(step * factors["microns_per_pixel"], bin_um, rtol=1e-9)


@pytest.mark.parametrize("slide", list(SLIDES))
def test_each_16um_bin_holds_the_counts_of_its_four_8um_bins(slide):
    """A cross-check of the reader's barcode-to-row mapping at both sizes (the fixture sums 8 um bins as
    Space Ranger sums 2 um bins; off-tissue 8 um bins count nothing)."""
    a16, a8 = read(slide, 16), read(slide, 8)
    assert list(a16.var_names) == list(a8.var_names)
    parent = {(r, c): i for i, (r, c) in enumerate(zip(a16.obs["array_row"], a16.obs["array_col"]))}
    rows = [parent[(r // 2, c // 2)] for r, c in zip(a8.obs["array_row"], a8.obs["array_col"])]
    summed = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(a16.n_obs, a8.n_obs)) @ a8.X
    assert abs(summed - a16.X).max() == 0
    totals = np.asarray(a8.X.sum(1)).ravel()
    assert 10 < np.median(totals) < 100  # ~0.8% of a her2st spot's UMIs, over 1,000 genes


@pytest.mark.parametrize("slide, bin_um", [("hd_C2", 16), ("hd_C3", 8)])
def test_check_reader_passes(slide, bin_um):
    check_reader(VisiumHDReader(), HD, slide, params={"bin_um": bin_um, "image": IMAGE})


def test_without_an_image_the_hires_png_is_used_with_a_warning():
    with pytest.warns(UserWarning, match="downsampled tissue_hires_image.png"):
        a = VisiumHDReader().read_slide(HD, "hd_C3", params={"bin_um": 8})
    factors = json.loads((bin_dir("hd_C3", 8) / "spatial" / "scalefactors_json.json").read_text())
    assert a.uns["stbench"]["image_path"] == str(bin_dir("hd_C3", 8) / "spatial" / "tissue_hires_image.png")
    assert a.uns["stbench"]["image_scale"] == factors["tissue_hires_scalef"]


@pytest.fixture(scope="module")
def hd_env(tmp_path_factory):
    root = fetch_fixture(tmp_path_factory.mktemp("visium_hd_mini"), "visium_hd_mini", HD)
    mp = pytest.MonkeyPatch()
    mp.setenv("STBENCH_DATA", str(root / "data"))
    mp.setenv("STBENCH_CACHE", str(root / "cache"))
    yield root
    mp.undo()


def test_fetch_prepare_and_run_the_catalogue_entry(hd_env, cli, tmp_path):
    cat = ("--catalog", str(FIXTURE_CATALOG))
    prepared = cli(*cat, "prepare", "visium_hd_mini")
    assert prepared.exit_code == 0, prepared.output
    out = tmp_path / "res"
    result = cli(*cat, "run", "--model", "mean", "--dataset", "visium_hd_mini", "--out", str(out), "--no-predictions")
    assert result.exit_code == 0, result.output
    (path,) = (out / "mean").glob("visium_hd_mini.strict.*.json")
    folds = json.loads(path.read_text())["folds"]
    assert [(f["query"], f["reference"], f["n_spots"]) for f in folds] == [
        ("hd_C2", ["hd_C3"], BINS[("hd_C2", 16)][1]), ("hd_C3", ["hd_C2"], BINS[("hd_C3", 16)][1])]
    assert all(50 <= f["n_genes"] <= 100 for f in folds)


@pytest.mark.parametrize("slide", list(SLIDES))
def test_cached_patches_are_crops_of_the_full_resolution_tiff(hd_env, slide):
    """24 px patches (16.6 um at 0.69 um/px: one 16 um bin) cut at round(centre) - 12 from the tiled JPEG TIFF,
    compared with crops computed here from the whole decoded image."""
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)], env={}).datasets.get("visium_hd_mini")
    path = ds.patches(slide)
    assert path == hd_env / "cache" / "patches" / "visium_hd_mini" / slide / "24px-native.h5"
    image = tifffile.imread(HD / slide / f"{slide}_tissue_image.tif")
    with h5py.File(path, "r") as f:
        images, coords, barcodes = f["images"][:], f["coords"][:], f["barcodes"][:].astype(str)
        assert int(f.attrs["n_dropped"]) == 0 and int(f.attrs["n_padded"]) == 0
    assert list(barcodes) == list(ds.read(slide).obs_names) and images.shape == (BINS[(slide, 16)][1], 24, 24, 3)
    for patch, (x, y) in zip(images, coords):
        cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
        np.testing.assert_array_equal(patch, image[cy - 12:cy + 12, cx - 12:cx + 12])
    assert np.median(images.reshape(len(images), -1).mean(1)) < 200  # stained tissue, not glass


# ------------------------------------------------------------------------------------------------ bad inputs


def copy_slide(tmp_path, slide="hd_C3"):
    shutil.copytree(HD / slide, tmp_path / slide)
    return tmp_path / slide / "binned_outputs" / "square_016um"


def rewrite_positions(folder, edit):
    path = folder / "spatial" / "tissue_positions.parquet"
    pq.write_table(edit(pq.read_table(path)), path)


def rewrite_factors(folder, **changes):
    path = folder / "spatial" / "scalefactors_json.json"
    factors = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in factors.items() if v is not None}))


def _in_tissue_2(t):
    return t.set_column(1, "in_tissue", pa.array(np.full(t.num_rows, 2, np.int32)))


BAD = {
    "missing bin size": (lambda d: None, {"bin_um": 2},
                         r"bin folder .*square_002um does not exist; this slide has bin sizes 8 um, 16 um: set params bin_um"),
    "bin size not 2/8/16": (lambda d: None, {"bin_um": 10}, "bin_um must be one of 2, 8, 16"),
    "unknown param": (lambda d: None, {"bin_size": 8}, "unknown reader param 'bin_size'"),
    "no binned_outputs": (lambda d: shutil.rmtree(d.parent), {}, r"binned_outputs does not exist; a Visium HD slide"),
    "parquet lacks a column": (lambda d: rewrite_positions(d, lambda t: t.drop_columns(["pxl_row_in_fullres"])), {},
                               r"tissue_positions.parquet lacks column\(s\) pxl_row_in_fullres"),
    "in_tissue not 0/1": (lambda d: rewrite_positions(d, _in_tissue_2), {}, "in_tissue of .* holds values other than 0/1"),
    "no parquet": (lambda d: (d / "spatial" / "tissue_positions.parquet").unlink(), {},
                   "tissue_positions.parquet does not exist; expected Space Ranger 3's"),
    "not a parquet": (lambda d: (d / "spatial" / "tissue_positions.parquet").write_text("barcode,in_tissue\n"), {},
                      r"cannot read positions file \(Parquet\) .*tissue_positions.parquet"),
    "no count matrix": (lambda d: (d / "filtered_feature_bc_matrix.h5").unlink(), {},
                        r"no count matrix; expected .*square_016um/filtered_feature_bc_matrix.h5"),
    "counts of another bin size": (
        lambda d: shutil.copy(d.parent / "square_008um" / "filtered_feature_bc_matrix.h5", d), {},
        r"only 0 of 502 spots .* have a row in the tissue_positions.parquet"),
    "scale factors of another bin size": (lambda d: rewrite_factors(d, bin_size_um=8.0), {},
                                          "says bin_size_um = 8 but it lies in the square_016um folder"),
    "no microns_per_pixel": (lambda d: rewrite_factors(d, microns_per_pixel=None), {},
                             r"microns_per_pixel in .*scalefactors_json.json must be a positive number \(it is missing\)"),
    "no scale factors": (lambda d: (d / "spatial" / "scalefactors_json.json").unlink(), {},
                         r"scalefactors_json.json does not exist; copy the bin folder's spatial/"),
    "image not there": (lambda d: None, {"image": "{slide}/missing.tif"}, "image 'hd_C3/missing.tif' matches no file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_one_line_errors_naming_the_file_and_the_fix(tmp_path, case):
    edit, params, message = BAD[case]
    edit(copy_slide(tmp_path))
    with pytest.raises(DataError, match=message) as e:
        read("hd_C3", folder=tmp_path, **params)
    assert "\n" not in str(e.value) and "hd_C3" in str(e.value)


def test_params_pixel_size_um_stands_in_for_microns_per_pixel(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="stbench")
    rewrite_factors(copy_slide(tmp_path), microns_per_pixel=None)
    a = read("hd_C3", folder=tmp_path, pixel_size_um=0.6924)
    assert a.uns["stbench"]["pixel_size_um"] == 0.6924
    # a pixel size that does not match the bin pitch is read, with a warning
    read("hd_C3", folder=tmp_path, pixel_size_um=0.5)
    assert "bins are 11.55 um apart at 0.5 um/px" in caplog.text


def test_a_catalogue_asking_for_a_missing_bin_size_exits_2_with_one_line(tmp_path, cli):
    cat = tmp_path / "hd.toml"
    cat.write_text(f'[hd]\nreader = "visium-hd"\nslides = ["hd_C2", "hd_C3"]\nquery = ["hd_C3"]\n'
                   f'genes = {{ set = "all" }}\nroot = "{HD}"\nparams = {{ bin_um = 2 }}\n')
    result = cli("--catalog", str(cat), "prepare", "hd", env={"STBENCH_CACHE": str(tmp_path / "cache")})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "square_002um does not exist; this slide has bin sizes 8 um, 16 um" in lines[0]


@pytest.mark.full_data
@pytest.mark.slow
def test_make_hd_fixture_reproduces_the_committed_files(tmp_path):
    """tests/data/make_hd_fixture.py, rerun on the full data, writes the same fixture: JSON byte for byte, the
    Parquet tables and the HDF5 datasets equal, images within encoder rounding, the same catalogue section."""
    import subprocess
    import sys

    from PIL import Image

    done = subprocess.run([sys.executable, str(FIXTURES / "make_hd_fixture.py"), "--shared", str(SHARED_DATA),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    committed = sorted(p.relative_to(HD) for p in HD.rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(tmp_path / "visium_hd") for p in (tmp_path / "visium_hd").rglob("*")
                               if p.is_file())
    for rel in committed:
        old, new = HD / rel, tmp_path / "visium_hd" / rel
        if rel.suffix == ".parquet":
            assert pq.read_table(old).equals(pq.read_table(new)), rel
        elif rel.suffix == ".h5":
            for a, b in zip(h5_counts(old), h5_counts(new)):
                assert (a != b).nnz == 0 if sp.issparse(a) else a == b, rel
        elif rel.suffix in (".png", ".tif"):
            a, b = (np.asarray(tifffile.imread(p) if p.suffix == ".tif" else Image.open(p).convert("RGB"),
                               dtype=np.int16) for p in (old, new))
            assert a.shape == b.shape and np.abs(a - b).max() <= 3, rel
        else:
            assert old.read_bytes() == new.read_bytes(), rel
