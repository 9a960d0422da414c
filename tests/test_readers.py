"""Slide readers (Visium, legacy ST, AnnData) and the shared checks, on real files and on small variants
built in tmp_path. Offline, CPU only, a few seconds.

Real files: the committed fixtures in tests/data (her2st_mini: her2st sections C2-C6 cut to 30 spots;
visium_sr1: a Space Ranger 1.x folder with real her2st pixels and counts), always; the full her2st
sections and the real Space Ranger 1.0 sample in ../shared/data, in the tests marked ``full_data``."""
from __future__ import annotations

import gzip
import logging
import re
import shutil
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from stbench.errors import DataError
from stbench.data.readers.anndata_reader import AnnDataReader, grid_from_coordinates
from stbench.data.readers import (check_slide_adata, estimate_pixel_size, match_rate_check,
                                 unique_gene_symbols)
from stbench.data.readers.st_legacy import STLegacyReader
from stbench.data.readers.visium import VisiumReader

from conftest import FIXTURES, HER2ST_MINI, SHARED_DATA, VISIUM_SR1

VISIUM_SAMPLE = SHARED_DATA / "visium_spaceranger_1.0.0"  # real Space Ranger 1.0 subset (black hires): full data
HER2ST = SHARED_DATA / "her2st"  # full sections: full data
HER2ST_SPOTS = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}  # datasets.md table, C1 absent
MINI_SPOTS = {"C2": 30, "C3": 30, "C4": 30, "C5": 30, "C6": 30}  # her2st_mini: each section's densest 6 x 5
# The Space Ranger 1.x folder the Visium variants below are built from: the committed fixture (real pixels)
VISIUM = VISIUM_SR1
POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ==================================================================================== checks


def _valid_adata(n: int = 6) -> anndata.AnnData:
    a = anndata.AnnData(X=sp.csr_matrix(np.arange(n * 3, dtype=np.float32).reshape(n, 3)),
                        obs=pd.DataFrame({"array_row": np.arange(n), "array_col": np.arange(n) * 2,
                                          "slide": ["s"] * n, "patient": ["p"] * n},
                                         index=[f"b{i}" for i in range(n)]),
                        var=pd.DataFrame(index=["G1", "G2", "G3"]))
    a.obsm["spatial"] = np.column_stack([np.arange(n) * 10.0, np.arange(n) * 5.0])
    a.uns["stbench"] = {"image_path": "img.tif", "image_scale": 1.0, "pixel_size_um": 0.5, "reader": "x",
                        "reader_version": "1", "source_files": ["a", "b"]}
    return a


def test_check_slide_adata_accepts_a_valid_slide():
    check_slide_adata(_valid_adata(), "slide s")


def _dup_obs(a):
    a.obs_names = ["b0"] * a.n_obs


def _dup_var(a):
    a.var_names = ["G1", "G1", "G3"]


def _int_spatial(a):
    a.obsm["spatial"] = a.obsm["spatial"].astype(np.int64)


def _nan_spatial(a):
    a.obsm["spatial"][0, 1] = np.nan


def _three_col_spatial(a):
    a.obsm["spatial"] = np.zeros((a.n_obs, 3))


def _float_row(a):
    a.obs["array_row"] = a.obs["array_row"].astype(float)


def _no_patient(a):
    del a.obs["patient"]


def _negative_x(a):
    a.X = a.X.toarray() - 1


def _no_uns_key(a):
    del a.uns["stbench"]["source_files"]


def _zero_scale(a):
    a.uns["stbench"]["image_scale"] = 0.0


def _bad_pixel_size(a):
    a.uns["stbench"]["pixel_size_um"] = "0.5"


@pytest.mark.parametrize("breaks, expected", [
    (_dup_obs, "obs .*not unique"), (_dup_var, "var .*not unique"), (_int_spatial, "expected float"),
    (_nan_spatial, "NaN"), (_three_col_spatial, "shape"), (_float_row, "array_row"), (_no_patient, "patient"),
    (_negative_x, "negative"), (_no_uns_key, "source_files"), (_zero_scale, "image_scale"),
    (_bad_pixel_size, "pixel_size_um"),
])
def test_check_slide_adata_rejects_each_contract_violation(breaks, expected):
    a = _valid_adata()
    breaks(a)
    with pytest.raises(DataError) as err:
        check_slide_adata(a, "slide 'S9'")
    msg = _one_line(err)
    assert msg.startswith("slide 'S9': ") and re.search(expected, msg), msg


def test_match_rate_check_logs_both_directions_and_fails_below_rate(caplog):
    with caplog.at_level(logging.INFO, logger="stbench"):
        assert match_rate_check(95, 100, 97, "slide X", counts_only=["AAA-1"]) == pytest.approx(0.95)
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "5 of 100" in warn[0].getMessage() and "AAA-1" in warn[0].getMessage()
    assert any(r.levelno == logging.INFO and "2 of 97" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"slide X: only 85 of 100 .*minimum 90%"):
        match_rate_check(85, 100, 85, "slide X")
    assert match_rate_check(85, 100, 85, "slide X", min_rate=0.8) == pytest.approx(0.85)


def test_unique_gene_symbols_uses_anndata_convention_and_warns():
    with pytest.warns(UserWarning, match="2 duplicated gene symbol"):
        out = unique_gene_symbols(["A", "B", "A", "A", "B", ""], "f.tsv")
    assert out == ["A", "B", "A-1", "A-2", "B-1", "unnamed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert unique_gene_symbols(["A", "B"]) == ["A", "B"]


def test_estimate_pixel_size_from_visium_and_st_pitch():
    # Visium hex grid: 138 px per 100 um, slightly rotated
    rows, cols = np.meshgrid(np.arange(10), np.arange(0, 20), indexing="ij")
    keep = (rows + cols) % 2 == 0
    r, c = rows[keep], cols[keep]
    theta = 0.02
    x0, y0 = c * 69.0, r * 119.5
    xy = np.column_stack([x0 * np.cos(theta) - y0 * np.sin(theta), x0 * np.sin(theta) + y0 * np.cos(theta)])
    assert estimate_pixel_size(xy, r, c, col_step=2, um_per_step=100) == pytest.approx(100 / 138)
    # legacy ST square grid: 290 px per 200 um, array_row = y, array_col = x
    gy, gx = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    xy = np.column_stack([gx.ravel() * 290.0 + 7, gy.ravel() * 290.0 + 3])
    assert estimate_pixel_size(xy, gy.ravel(), gx.ravel(), col_step=1, um_per_step=200) == pytest.approx(200 / 290)
    assert estimate_pixel_size(xy[:1], [0], [0], col_step=1, um_per_step=200) is None


# ==================================================================================== Visium

H5 = VISIUM / "filtered_feature_bc_matrix.h5"


@pytest.fixture(scope="module")
def visium_positions() -> pd.DataFrame:
    return pd.read_csv(VISIUM / "spatial" / "tissue_positions_list.csv", header=None, names=POS_COLS)


@pytest.fixture(scope="module")
def visium_counts() -> anndata.AnnData:
    import scanpy as sc

    return sc.read_10x_h5(str(H5))


def _open_w(path: Path):
    return gzip.open(path, "wt") if path.name.endswith(".gz") else open(path, "w")


def make_visium(root: Path, positions: pd.DataFrame, counts: anndata.AnnData, *, slide: str = "S1",
                flat: bool = False, positions_name: str = "spatial/tissue_positions_list.csv", header: bool = False,
                matrix: str = "h5", prefix: str = "", gz: bool = False, hires: bool = True,
                fullres: str | None = None, coord_scale: float = 1.0) -> Path:
    """Build a Space Ranger-like slide folder from the real sample; return the slide folder.

    ``matrix``: "h5" (copy of the real h5), "mtx" (filtered_feature_bc_matrix/ folder) or "mtx-flat"
    (mtx files in the slide folder, as GEO ships them). ``fullres``: file name of a full-resolution image
    to write (its size fits the coordinates times ``coord_scale``).
    """
    d = root if flat else root / slide
    (d / "spatial").mkdir(parents=True, exist_ok=True)
    z = ".gz" if gz else ""
    pos = positions.copy()
    for col in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        pos[col] = np.round(pos[col] * coord_scale).astype(int)
    # GEO-style (prefix): every file flat in the slide folder; else Space Ranger's spatial/ folder
    spatial = d if prefix else d / "spatial"
    pos_path = spatial / f"{prefix}{Path(positions_name).name}{z}"
    with _open_w(pos_path) as fh:
        pos.to_csv(fh, header=header, index=False)
    if matrix == "h5":
        shutil.copy(H5, d / f"{prefix}filtered_feature_bc_matrix.h5")
    else:
        mdir = d / "filtered_feature_bc_matrix" if matrix == "mtx" else d
        mdir.mkdir(exist_ok=True)
        mm = mdir / f"{prefix}matrix.mtx"
        scipy.io.mmwrite(str(mm), sp.csr_matrix(counts.X).T.tocoo().astype(np.int64))
        if gz or matrix == "mtx":
            with open(mm, "rb") as src, gzip.open(mm.with_name(mm.name + ".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            mm.unlink()
        zz = ".gz" if (gz or matrix == "mtx") else ""
        with _open_w(mdir / f"{prefix}barcodes.tsv{zz}") as fh:
            fh.write("\n".join(counts.obs_names) + "\n")
        with _open_w(mdir / f"{prefix}features.tsv{zz}") as fh:
            for gid, name in zip(counts.var["gene_ids"], counts.var_names):
                fh.write(f"{gid}\t{name}\tGene Expression\n")
    if hires:
        shutil.copy(VISIUM / "spatial" / "tissue_hires_image.png", spatial / f"{prefix}tissue_hires_image.png")
        sf = (VISIUM / "spatial" / "scalefactors_json.json").read_text()
        with _open_w(spatial / f"{prefix}scalefactors_json.json{z}") as fh:
            fh.write(sf)
    if fullres:
        w = int(positions["pxl_col_in_fullres"].max() * coord_scale) + 50
        h = int(positions["pxl_row_in_fullres"].max() * coord_scale) + 50
        Image.new("RGB", (w, h), "white").save(d / fullres)
    return d


def _same_slide(a: anndata.AnnData, b: anndata.AnnData) -> None:
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    np.testing.assert_array_equal(a.obs[["array_row", "array_col"]], b.obs[["array_row", "array_col"]])


def median_pitch(positions: pd.DataFrame, scale: float = 1.0) -> float:
    """Median pixel distance of spots on the same array_row two array_col apart (100 um on Visium), from
    the positions as make_visium writes them (times ``scale``, rounded)."""
    p = positions.assign(x=np.round(positions["pxl_col_in_fullres"] * scale),
                         y=np.round(positions["pxl_row_in_fullres"] * scale))
    pairs = p.merge(p.assign(array_col=p["array_col"] - 2), on=["array_row", "array_col"], suffixes=("", "_n"))
    return float(np.median(np.hypot(pairs["x_n"] - pairs["x"], pairs["y_n"] - pairs["y"])))


@pytest.fixture(scope="module")
def visium_real() -> anndata.AnnData:
    """The Space Ranger 1.x fixture (real her2st pixels and counts) as the reader reads it."""
    with pytest.warns(UserWarning, match="downsampled"):
        return VisiumReader().read_slide(FIXTURES, VISIUM.name)


# Space Ranger 1.x folders read as they are: (folder, shape, tissue_hires_scalef, um/px, in-tissue spots,
# hires image size). visium_sr1: 52 grid spots over a 1300 x 1150 px window of her2st C5 (0.682 um/px,
# so 100 um = 146.6 px), 39 in tissue; hires long side 272 px. The real sample: 138 px per 100 um.
SR1_SAMPLES = [
    pytest.param(VISIUM_SR1, (39, 3000), 272 / 1300, (0.682, 0.01), 39, (272, 241), id="fixture"),
    pytest.param(VISIUM_SAMPLE, (100, 100), 0.150015, (100 / 138, 1e-3), 4235, (2000, 2000), id="spaceranger-1.0.0",
                 marks=pytest.mark.full_data),
]


@pytest.mark.parametrize("folder, shape, scale, um_per_px, n_in_tissue, hires_size", SR1_SAMPLES)
def test_visium_spaceranger1_sample_uses_hires_fallback(folder, shape, scale, um_per_px, n_in_tissue, hires_size):
    import scanpy as sc

    h5 = folder / "filtered_feature_bc_matrix.h5"
    positions = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, names=POS_COLS)
    counts = sc.read_10x_h5(str(h5))
    with pytest.warns(UserWarning, match="downsampled"):
        a = VisiumReader().read_slide(folder.parent, folder.name)
    assert a.shape == shape
    assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    np.testing.assert_array_equal(a.X.toarray(), counts.X.toarray())  # raw counts, h5 order
    assert list(a.obs_names) == list(counts.obs_names)
    meta = a.uns["stbench"]
    assert meta["image_path"] == str(folder / "spatial" / "tissue_hires_image.png")
    assert meta["image_scale"] == pytest.approx(scale)
    assert meta["pixel_size_um"] == pytest.approx(um_per_px[0], rel=um_per_px[1])  # from the spot pitch
    assert meta["reader"] == "visium" and meta["reader_version"] == "1"
    assert set(meta["source_files"]) == {str(folder / "spatial" / "tissue_positions_list.csv"), str(h5),
                                         str(folder / "spatial" / "scalefactors_json.json")}
    assert meta["positions_format"].startswith("spaceranger-1")
    assert meta["n_spots_in_tissue"] == n_in_tissue == int(positions["in_tissue"].sum())
    assert meta["n_zero_count_spots"] == 0
    # true 10x column order: x = pxl_col_in_fullres (6th), y = pxl_row_in_fullres (5th)
    pos = positions.set_index("barcode").loc[a.obs_names]
    assert (pos["in_tissue"] == 1).all()
    np.testing.assert_array_equal(a.obsm["spatial"][:, 0], pos["pxl_col_in_fullres"])
    np.testing.assert_array_equal(a.obsm["spatial"][:, 1], pos["pxl_row_in_fullres"])
    np.testing.assert_array_equal(a.obs["array_row"], pos["array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], pos["array_col"])
    assert (a.obs["slide"] == folder.name).all() and (a.obs["patient"] == folder.name).all()
    # hires coordinates fall inside the hires image
    assert Image.open(folder / "spatial" / "tissue_hires_image.png").size == hires_size
    hires_xy = a.obsm["spatial"] * meta["image_scale"]
    assert (hires_xy > 0).all() and (hires_xy < hires_size).all()


def test_visium_2x_header_layout_matches_1x(tmp_path, visium_positions, visium_counts, visium_real):
    make_visium(tmp_path, visium_positions, visium_counts, positions_name="spatial/tissue_positions.csv",
                header=True)
    with pytest.warns(UserWarning, match="downsampled"):
        a = VisiumReader().read_slide(tmp_path, "S1", patient="P7")
    _same_slide(a, visium_real)
    assert a.uns["stbench"]["positions_format"].startswith("spaceranger-2")
    assert (a.obs["patient"] == "P7").all() and (a.obs["slide"] == "S1").all()


@pytest.mark.parametrize("name, header", [("spatial/tissue_positions.csv", False),
                                          ("spatial/tissue_positions_list.csv", True)])
def test_visium_header_is_sniffed_not_trusted_from_the_name(tmp_path, visium_positions, visium_counts,
                                                            visium_real, name, header):
    make_visium(tmp_path, visium_positions, visium_counts, positions_name=name, header=header)
    with pytest.warns(UserWarning, match="downsampled"):
        _same_slide(VisiumReader().read_slide(tmp_path, "S1"), visium_real)


def test_visium_mtx_folder_variant(tmp_path, visium_positions, visium_counts, visium_real):
    d = make_visium(tmp_path, visium_positions, visium_counts, matrix="mtx")
    assert not list(d.glob("*.h5")) and (d / "filtered_feature_bc_matrix" / "matrix.mtx.gz").is_file()
    with pytest.warns(UserWarning, match="downsampled"):
        a = VisiumReader().read_slide(tmp_path, "S1")
    _same_slide(a, visium_real)
    assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    assert str(d / "filtered_feature_bc_matrix" / "features.tsv.gz") in a.uns["stbench"]["source_files"]


def test_visium_geo_prefixed_gz_flat_folder_with_fullres_image(tmp_path, visium_positions, visium_counts,
                                                               visium_real, recwarn):
    # two GEO sections share one folder; each file name carries the section id
    for gsm, sec in (("GSM7697868", "C73A1"), ("GSM7697869", "C73B1")):
        make_visium(tmp_path, visium_positions, visium_counts, flat=True, matrix="mtx-flat", gz=True,
                    prefix=f"{gsm}_{sec}_", coord_scale=0.1, fullres=f"{gsm}_GEX_{sec[:3]}_{sec[3:]}_Merged.tif")
    for name in ("GSM7697868_C73A1_matrix.mtx.gz", "GSM7697868_C73A1_tissue_positions_list.csv.gz",
                 "GSM7697869_C73B1_scalefactors_json.json.gz", "GSM7697868_GEX_C73_A1_Merged.tif"):
        assert (tmp_path / name).is_file(), name
    # the Merged.tif names do not contain "C73A1": two candidates, so the image must be named
    with pytest.raises(DataError, match="several candidate full-resolution images") as err:
        VisiumReader().read_slide(tmp_path, "C73A1", params={"layout": "flat"})
    _one_line(err)
    a = VisiumReader().read_slide(tmp_path, "C73A1", params={"layout": "flat", "image": "*_GEX_C73_A1_*.tif",
                                                             "pixel_size_um": 0.3})
    assert not [w for w in recwarn if "downsampled" in str(w.message)]
    meta = a.uns["stbench"]
    assert meta["image_path"] == str(tmp_path / "GSM7697868_GEX_C73_A1_Merged.tif")
    assert meta["image_scale"] == 1.0 and meta["pixel_size_um"] == 0.3
    assert sorted(Path(f).name for f in meta["source_files"]) == [
        "GSM7697868_C73A1_barcodes.tsv.gz", "GSM7697868_C73A1_features.tsv.gz", "GSM7697868_C73A1_matrix.mtx.gz",
        "GSM7697868_C73A1_tissue_positions_list.csv.gz"]
    assert list(a.obs_names) == list(visium_real.obs_names)
    np.testing.assert_array_equal(a.X.toarray(), visium_real.X.toarray())
    np.testing.assert_allclose(a.obsm["spatial"], np.round(visium_real.obsm["spatial"] * 0.1))
    # without a full-resolution image each section falls back to its own hires PNG
    for f in tmp_path.glob("*_Merged.tif"):
        f.unlink()
    with pytest.warns(UserWarning, match="downsampled"):
        b = VisiumReader().read_slide(tmp_path, "C73B1", params={"layout": "flat"})
    assert b.uns["stbench"]["image_path"] == str(tmp_path / "GSM7697869_C73B1_tissue_hires_image.png")
    assert str(tmp_path / "GSM7697869_C73B1_scalefactors_json.json.gz") in b.uns["stbench"]["source_files"]


def test_visium_geo_single_section_finds_fullres_and_skips_spaceranger_pngs(tmp_path, visium_positions,
                                                                            visium_counts, recwarn):
    d = make_visium(tmp_path, visium_positions, visium_counts, matrix="mtx-flat", gz=True,
                    prefix="GSM7697868_C73A1_", coord_scale=0.1, fullres="GSM7697868_GEX_C73_A1_Merged.tif")
    shutil.copy(VISIUM / "spatial" / "tissue_lowres_image.png", d / "GSM7697868_C73A1_tissue_lowres_image.png")
    a = VisiumReader().read_slide(tmp_path, "S1")
    assert a.uns["stbench"]["image_path"] == str(d / "GSM7697868_GEX_C73_A1_Merged.tif")
    assert a.uns["stbench"]["image_scale"] == 1.0
    # coordinates scaled by 0.1 (and rounded): the pitch is 10x smaller, the pixel 10x larger
    assert a.uns["stbench"]["pixel_size_um"] == pytest.approx(100 / median_pitch(visium_positions, 0.1), rel=1e-6)
    assert a.uns["stbench"]["pixel_size_um"] == pytest.approx(10 * 0.682, rel=0.05)
    assert not [w for w in recwarn if "downsampled" in str(w.message)]


def test_visium_drops_spots_not_in_tissue(tmp_path, visium_positions, visium_counts):
    n, n_in_tissue = visium_counts.n_obs, int(visium_positions["in_tissue"].sum())
    assert (n, n_in_tissue) == (39, 39)
    pos = visium_positions.copy()
    off = list(visium_counts.obs_names[:3])
    pos.loc[pos["barcode"].isin(off), "in_tissue"] = 0
    make_visium(tmp_path, pos, visium_counts)
    with pytest.warns(UserWarning, match="downsampled"):
        a = VisiumReader().read_slide(tmp_path, "S1")
    assert a.n_obs == n - 3 and not set(off) & set(a.obs_names)
    assert a.uns["stbench"]["n_spots_in_tissue"] == n_in_tissue - 3


def test_visium_counts_barcodes_missing_from_positions(tmp_path, visium_positions, visium_counts, caplog):
    assert visium_counts.n_obs == 39
    gone = set(visium_counts.obs_names[:3])  # 36 of 39 (92%) keep a position: above the 90% minimum
    make_visium(tmp_path, visium_positions[~visium_positions["barcode"].isin(gone)], visium_counts)
    with caplog.at_level(logging.WARNING, logger="stbench"), pytest.warns(UserWarning, match="downsampled"):
        a = VisiumReader().read_slide(tmp_path, "S1")
    assert a.n_obs == 36 and not gone & set(a.obs_names)
    assert any("3 of 39 spots" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    gone = set(visium_counts.obs_names[:8])
    make_visium(tmp_path, visium_positions[~visium_positions["barcode"].isin(gone)], visium_counts)
    with pytest.raises(DataError, match=r"only 31 of 39 spots \(79%\).*minimum 90%") as err:
        VisiumReader().read_slide(tmp_path, "S1")
    assert "tissue_positions_list.csv" in _one_line(err)
    with pytest.warns(UserWarning, match="downsampled"):
        assert VisiumReader().read_slide(tmp_path, "S1", params={"min_match_rate": 0.75}).n_obs == 31


def test_visium_missing_files_name_the_file_and_layout(tmp_path, visium_positions, visium_counts):
    with pytest.raises(DataError, match=r"slide folder .*S1 does not exist.*layout") as err:
        VisiumReader().read_slide(tmp_path, "S1")
    _one_line(err)
    d = make_visium(tmp_path, visium_positions, visium_counts)
    (d / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(DataError, match=r"no count matrix.*filtered_feature_bc_matrix\.h5.*matrix\.mtx") as err:
        VisiumReader().read_slide(tmp_path, "S1")
    _one_line(err)
    d = make_visium(tmp_path, visium_positions, visium_counts)
    (d / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(DataError, match=r"no spot positions file.*tissue_positions\.csv.*tissue_positions_list\.csv"
                       ) as err:
        VisiumReader().read_slide(tmp_path, "S1")
    _one_line(err)
    d = make_visium(tmp_path, visium_positions, visium_counts)
    (d / "spatial" / "tissue_hires_image.png").unlink()
    with pytest.raises(DataError, match=r"no image found.*full-resolution.*params image") as err:
        VisiumReader().read_slide(tmp_path, "S1")
    _one_line(err)
    d = make_visium(tmp_path, visium_positions, visium_counts)
    (d / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(DataError, match=r"no scale factors file.*scalefactors_json\.json"):
        VisiumReader().read_slide(tmp_path, "S1")


def test_visium_ambiguous_or_zipped_files_fail(tmp_path, visium_positions, visium_counts):
    d = make_visium(tmp_path, visium_positions, visium_counts)
    visium_positions.to_csv(d / "spatial" / "tissue_positions.csv", index=False)
    several = r"several files could be the spot positions file \(tissue_positions\.csv, tissue_positions_list\.csv\)"
    with pytest.raises(DataError, match=several + ".*keep exactly one") as err:
        VisiumReader().read_slide(tmp_path, "S1")
    _one_line(err)
    (d / "spatial" / "tissue_positions.csv").unlink()
    (d / "GEX_Merged.tif.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="gzipped; decompress"):
        VisiumReader().read_slide(tmp_path, "S1")


def test_visium_image_selection_bounds_and_params(tmp_path, visium_positions, visium_counts):
    d = make_visium(tmp_path, visium_positions, visium_counts, coord_scale=0.1, fullres="he.jpg")
    a = VisiumReader().read_slide(tmp_path, "S1", params={"pixel_size_um": 0.5})
    assert a.uns["stbench"]["image_path"] == str(d / "he.jpg") and a.uns["stbench"]["pixel_size_um"] == 0.5
    Image.new("RGB", (100, 100)).save(d / "small.png")
    with pytest.raises(DataError, match="several candidate"):
        VisiumReader().read_slide(tmp_path, "S1")
    with pytest.raises(DataError, match=r"spot centres lie outside the image .*small\.png \(100 x 100 px") as err:
        VisiumReader().read_slide(tmp_path, "S1", params={"image": "small.png"})
    _one_line(err)
    assert VisiumReader().read_slide(tmp_path, "S1", params={"image": "small.png", "check_bounds": False}).n_obs == 39
    with pytest.raises(DataError, match=r"unknown reader param 'pixel_size'; did you mean 'pixel_size_um'"):
        VisiumReader().read_slide(tmp_path, "S1", params={"pixel_size": 0.5})
    with pytest.raises(DataError, match="layout must be one of"):
        VisiumReader().read_slide(tmp_path, "S1", params={"layout": "nested"})


def test_visium_spaceranger_outs_folder_and_zipped_hires(tmp_path, visium_positions, visium_counts, visium_real):
    make_visium(tmp_path / "S1", visium_positions, visium_counts, slide="outs")
    with pytest.warns(UserWarning, match="downsampled"):
        _same_slide(VisiumReader().read_slide(tmp_path, "S1"), visium_real)
    hires = tmp_path / "S1" / "outs" / "spatial" / "tissue_hires_image.png"
    with open(hires, "rb") as src, gzip.open(hires.with_name(hires.name + ".gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    hires.unlink()
    with pytest.raises(DataError, match=r"hires image .*tissue_hires_image\.png\.gz is gzipped; decompress"):
        VisiumReader().read_slide(tmp_path, "S1")


def test_visium_bad_positions_columns(tmp_path, visium_positions, visium_counts):
    bad = visium_positions.copy()
    bad["in_tissue"] = bad["array_row"]  # columns shifted: in_tissue is not 0/1
    make_visium(tmp_path, bad, visium_counts)
    with pytest.raises(DataError, match=r"in_tissue .*other than 0/1; expected columns barcode, in_tissue"):
        VisiumReader().read_slide(tmp_path, "S1")


# ==================================================================================== legacy ST (her2st)


# (folder, spots per section, pixel-size range, image width range, image height range). The full sections'
# pixel size comes from ~150 neighbour pairs; the fixture's from the 25 pairs of its 6 x 5 window.
HER2ST_CASES = [
    pytest.param((HER2ST_MINI, MINI_SPOTS, (0.66, 0.72), (1700, 1800), (1450, 1500)), id="mini"),
    pytest.param((HER2ST, HER2ST_SPOTS, (0.67, 0.71), (9000, 9500), (9500, 10000)), id="full",
                 marks=pytest.mark.full_data),
]


@pytest.fixture(scope="module", params=HER2ST_CASES)
def her2st_case(request):
    root, spots, px, width, height = request.param
    return root, {s: STLegacyReader().read_slide(root, s) for s in spots}, spots, px, width, height


def test_her2st_c2_to_c6_spot_counts_pixel_size_and_geometry(her2st_case):
    root, slides, spots, px_range, width, height = her2st_case
    for s, a in slides.items():
        assert a.n_obs == spots[s], s
        with gzip.open(root / "ST-cnts" / f"{s}.tsv.gz", "rt") as fh:
            n_genes = len(fh.readline().rstrip("\n").split("\t")) - 1
        assert a.n_vars == n_genes
        meta = a.uns["stbench"]
        assert px_range[0] < meta["pixel_size_um"] < px_range[1], (s, meta["pixel_size_um"])
        assert meta["image_scale"] == 1.0 and meta["reader"] == "st-legacy" and meta["n_zero_count_spots"] == 0
        img = Path(meta["image_path"])
        assert img.parent == root / "ST-imgs" / "C" / s and img.suffix == ".jpg"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # 92 Mpx JPEG, header only
            w, h = Image.open(img).size
        assert width[0] < w < width[1] and height[0] < h < height[1]
        xy = a.obsm["spatial"]
        assert (xy > 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
        assert list(a.obs_names) == [f"{x}x{y}" for x, y in zip(a.obs["array_col"], a.obs["array_row"])]
        assert (a.obs["patient"] == "C").all() and (a.obs["slide"] == s).all()
        assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
        assert meta["source_files"] == [str(root / "ST-cnts" / f"{s}.tsv.gz"),
                                        str(root / "ST-spotfiles" / f"{s}_selection.tsv")]


def test_her2st_values_match_the_files(her2st_case):
    root, slides = her2st_case[:2]
    a = slides["C2"]
    cnt = pd.read_csv(root / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    np.testing.assert_array_equal(a.X.sum(axis=1).A1, cnt.loc[a.obs_names].sum(axis=1).to_numpy())
    col = list(a.var_names).index("ERBB2")
    np.testing.assert_array_equal(a.X[:, col].toarray().ravel(), cnt.loc[a.obs_names, "ERBB2"].to_numpy())
    spots = pd.read_csv(root / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
    np.testing.assert_array_equal(a.obsm["spatial"], spots.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy())


@pytest.mark.full_data
def test_her2st_mini_is_an_exact_cut_of_the_full_sections():
    """Each fixture section: the full section's count rows and spot rows (pixels shifted by the crop origin),
    and the crop's pixels within JPEG re-encoding noise of the full scan's."""
    for s in MINI_SPOTS:
        mini = pd.read_csv(HER2ST_MINI / "ST-cnts" / f"{s}.tsv.gz", sep="\t", index_col=0)
        full = pd.read_csv(HER2ST / "ST-cnts" / f"{s}.tsv.gz", sep="\t", index_col=0)
        assert set(mini.columns) <= set(full.columns) and len(mini.columns) > 0.9 * len(full.columns)
        pd.testing.assert_frame_equal(mini, full.loc[mini.index, mini.columns])
        spots_m = pd.read_csv(HER2ST_MINI / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        spots_f = pd.read_csv(HER2ST / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        joined = spots_m.merge(spots_f, on=["x", "y"], suffixes=("", "_full"))
        assert len(joined) == len(spots_m) == len(mini)
        shift = (joined["pixel_x_full"] - joined["pixel_x"]).round(6), (joined["pixel_y_full"] - joined["pixel_y"]).round(6)
        assert shift[0].nunique() == 1 and shift[1].nunique() == 1
        ox, oy = int(shift[0].iloc[0]), int(shift[1].iloc[0])
        assert ox % 16 == 0 and oy % 16 == 0  # on the JPEG block grid
        (img_m,) = (HER2ST_MINI / "ST-imgs" / "C" / s).glob("*.jpg")
        (img_f,) = (HER2ST / "ST-imgs" / "C" / s).glob("*.jpg")
        assert img_m.name == img_f.name
        crop = np.asarray(Image.open(img_m).convert("RGB"), dtype=np.int16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            ref = Image.open(img_f).convert("RGB").crop((ox, oy, ox + crop.shape[1], oy + crop.shape[0]))
        diff = np.abs(crop - np.asarray(ref, dtype=np.int16))
        assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 8, (s, diff.mean())


@pytest.fixture(scope="module")
def c2_subset() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixture's C2: its 30 count rows (first 300 genes) and its spot file."""
    cnt = pd.read_csv(HER2ST_MINI / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    spots = pd.read_csv(HER2ST_MINI / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    assert len(cnt) == len(spots) == 30
    return cnt.iloc[:30, :300], spots


def make_her2st(root: Path, cnt: pd.DataFrame, spots: pd.DataFrame, *, slide: str = "C2", patient_dir: str = "C",
                gz_counts: bool = False, gz_spots: bool = False) -> Path:
    for sub in ("ST-cnts", "ST-spotfiles", f"ST-imgs/{patient_dir}/{slide}"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cnt.to_csv(root / "ST-cnts" / (f"{slide}.tsv" + (".gz" if gz_counts else "")), sep="\t")
    spots.to_csv(root / "ST-spotfiles" / (f"{slide}_selection.tsv" + (".gz" if gz_spots else "")), sep="\t",
                 index=False)
    img = root / "ST-imgs" / patient_dir / slide / "5714_HE_BT_C2.jpg"
    if not img.exists():
        img.symlink_to(HER2ST_MINI / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg")
    return root


def test_her2st_count_row_missing_from_spot_file(tmp_path, c2_subset, caplog):
    cnt, spots = c2_subset
    gone = cnt.index[3]
    x, y = map(int, gone.split("x"))
    make_her2st(tmp_path, cnt, spots[~((spots["x"] == x) & (spots["y"] == y))])
    with caplog.at_level(logging.WARNING, logger="stbench"):
        a = STLegacyReader().read_slide(tmp_path, "C2")
    assert a.n_obs == 29 and gone not in a.obs_names and a.n_vars == 300
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 of 30 spots" in m and gone in m for m in msgs), msgs
    # most rows unmatched: below the match rate
    keep = {tuple(map(int, k.split("x"))) for k in cnt.index[:10]}
    make_her2st(tmp_path, cnt, spots[[(x, y) in keep for x, y in zip(spots["x"], spots["y"])]])
    with pytest.raises(DataError, match=r"only 10 of 30 spots .*C2_selection\.tsv") as err:
        STLegacyReader().read_slide(tmp_path, "C2")
    _one_line(err)


def test_her2st_plain_tsv_gz_spotfile_selected_and_patient_folder(tmp_path, c2_subset):
    cnt, spots = c2_subset
    spots = spots.copy()
    first = cnt.index[0]
    x, y = map(int, first.split("x"))
    spots.loc[(spots["x"] == x) & (spots["y"] == y), "selected"] = 0
    make_her2st(tmp_path, cnt, spots, patient_dir="patC", gz_spots=True)
    a = STLegacyReader().read_slide(tmp_path, "C2", patient="patC", params={"pixel_size_um": 0.7})
    assert a.n_obs == 29 and first not in a.obs_names
    assert (a.obs["patient"] == "patC").all() and a.uns["stbench"]["pixel_size_um"] == 0.7
    assert a.uns["stbench"]["source_files"][0].endswith("ST-cnts/C2.tsv")
    assert a.uns["stbench"]["source_files"][1].endswith("C2_selection.tsv.gz")


def test_her2st_duplicate_symbols_and_zero_count_spots(tmp_path, c2_subset):
    cnt, spots = c2_subset
    cnt = cnt.copy()
    cnt.iloc[5, :] = 0
    cols = list(cnt.columns)
    cols[1] = cols[2] = cols[0]
    make_her2st(tmp_path, cnt.set_axis(cols, axis=1), spots, gz_counts=True)
    with pytest.warns(UserWarning, match="duplicated gene symbol"):
        a = STLegacyReader().read_slide(tmp_path, "C2")
    assert list(a.var_names[:3]) == [cols[0], f"{cols[0]}-1", f"{cols[0]}-2"]
    assert a.uns["stbench"]["n_zero_count_spots"] == 1 and a.n_obs == 30
    assert a.X[list(a.obs_names).index(cnt.index[5])].sum() == 0


def test_her2st_missing_and_corrupt_files(tmp_path, c2_subset):
    with pytest.raises(DataError, match=r"count file .*ST-cnts/C9\.tsv\.gz \(or C9\.tsv\) does not exist.*ST-spotfiles"
                       ) as err:
        STLegacyReader().read_slide(HER2ST_MINI, "C9")
    _one_line(err)
    cnt, spots = c2_subset
    make_her2st(tmp_path, cnt, spots)
    (tmp_path / "ST-cnts" / "C2.tsv").unlink()
    (tmp_path / "ST-cnts" / "C2.tsv.gz").write_bytes(b"this is not gzip\nat all\n")
    with pytest.raises(DataError, match=r"cannot read count file .*C2\.tsv\.gz .*re-download") as err:
        STLegacyReader().read_slide(tmp_path, "C2")
    _one_line(err)
    raw = (HER2ST_MINI / "ST-cnts" / "C2.tsv.gz").read_bytes()
    (tmp_path / "ST-cnts" / "C2.tsv.gz").write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(DataError, match=r"cannot read count file .*C2\.tsv\.gz") as err:
        STLegacyReader().read_slide(tmp_path, "C2")
    _one_line(err)
    make_her2st(tmp_path, cnt, spots)
    (tmp_path / "ST-cnts" / "C2.tsv.gz").unlink()
    (tmp_path / "ST-spotfiles" / "C2_selection.tsv").unlink()
    with pytest.raises(DataError, match=r"spot file .*C2_selection\.tsv .*does not exist"):
        STLegacyReader().read_slide(tmp_path, "C2")


def test_her2st_irregular_count_values(tmp_path, c2_subset):
    cnt, spots = c2_subset
    frac = cnt.astype(float).copy()
    frac.iloc[0, 0] = 1.5  # not integers: parsed as floats
    make_her2st(tmp_path, frac, spots)
    a = STLegacyReader().read_slide(tmp_path, "C2")
    assert a.X[list(a.obs_names).index(cnt.index[0]), 0] == pytest.approx(1.5)
    bad = cnt.astype(object).copy()
    bad.iloc[2, 7] = "x1"
    make_her2st(tmp_path, bad, spots)
    with pytest.raises(DataError, match=rf"non-numeric counts \(gene column '{re.escape(cnt.columns[7])}'\)") as err:
        STLegacyReader().read_slide(tmp_path, "C2")
    _one_line(err)
    bad.iloc[2, 7] = np.nan  # empty field
    make_her2st(tmp_path, bad, spots)
    with pytest.raises(DataError, match="missing or infinite counts"):
        STLegacyReader().read_slide(tmp_path, "C2")
    bad = cnt.copy()
    bad.index = ["spot_" + i for i in cnt.index]
    make_her2st(tmp_path, bad, spots)
    with pytest.raises(DataError, match=r"not of the form '\{x\}x\{y\}'.*'spot_"):
        STLegacyReader().read_slide(tmp_path, "C2")


def test_her2st_image_folder_must_hold_one_image(tmp_path, c2_subset):
    cnt, spots = c2_subset
    make_her2st(tmp_path, cnt, spots)
    Image.new("RGB", (10, 10)).save(tmp_path / "ST-imgs" / "C" / "C2" / "thumb.png")
    with pytest.raises(DataError, match=r"several images in .*C2 .*params image") as err:
        STLegacyReader().read_slide(tmp_path, "C2")
    _one_line(err)
    a = STLegacyReader().read_slide(tmp_path, "C2", params={"image": "*.jpg"})
    assert a.uns["stbench"]["image_path"].endswith("5714_HE_BT_C2.jpg")
    with pytest.raises(DataError, match="outside the image"):
        STLegacyReader().read_slide(tmp_path, "C2", params={"image": "thumb.png"})
    shutil.rmtree(tmp_path / "ST-imgs" / "C")
    with pytest.raises(DataError, match=r"image folder .*ST-imgs/C/C2 does not exist"):
        STLegacyReader().read_slide(tmp_path, "C2")


# ==================================================================================== AnnData


def _write_h5ad(folder: Path, slide: str = "s1", *, grid: bool = False, image: str | None = "he.png",
                var_names=None, patient_col: bool = False) -> anndata.AnnData:
    rng = np.random.default_rng(0)
    gy, gx = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    xy = np.column_stack([100 + gx.ravel() * 50.0, 80 + gy.ravel() * 50.0]) + rng.normal(0, 2, (12, 2))
    obs = pd.DataFrame(index=[f"spot{i}" for i in range(12)])
    if grid:
        obs["array_row"], obs["array_col"] = gy.ravel() * 10, gx.ravel() * 10
    if patient_col:
        obs["patient"] = "donor7"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        a = anndata.AnnData(X=rng.poisson(2, (12, 5)).astype(np.float64), obs=obs,
                            var=pd.DataFrame(index=var_names or [f"G{i}" for i in range(5)]))
    a.obsm["spatial"] = xy
    if image:
        a.uns["stbench"] = {"image_path": image, "pixel_size_um": 0.5}
        Image.new("RGB", (400, 300), "white").save(folder / image)
    folder.mkdir(exist_ok=True)
    a.write_h5ad(folder / f"{slide}.h5ad")
    return a


def test_anndata_reader_fills_obs_and_ranks_the_grid(tmp_path):
    src = _write_h5ad(tmp_path)
    a = AnnDataReader().read_slide(tmp_path, "s1")
    assert a.shape == (12, 5) and isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    np.testing.assert_array_equal(a.X.toarray(), src.X)
    np.testing.assert_array_equal(a.obs["array_row"], np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(a.obs["array_col"], np.tile(np.arange(4), 3))
    assert (a.obs["slide"] == "s1").all() and (a.obs["patient"] == "s1").all()
    meta = a.uns["stbench"]
    assert meta["image_path"] == str(tmp_path / "he.png") and meta["image_scale"] == 1.0
    assert meta["pixel_size_um"] == 0.5 and meta["reader"] == "anndata"
    assert meta["source_files"] == [str(tmp_path / "s1.h5ad")]


def test_anndata_reader_keeps_grid_and_patient_and_takes_params(tmp_path):
    _write_h5ad(tmp_path, grid=True, patient_col=True, var_names=["A", "A", "B", "C", "D"])
    Image.new("RGB", (800, 600)).save(tmp_path / "other.png")
    with pytest.warns(UserWarning, match="duplicated gene symbol"):
        a = AnnDataReader().read_slide(tmp_path, "s1", params={"image": "other.png", "pixel_size_um": 0.25})
    assert list(a.var_names) == ["A", "A-1", "B", "C", "D"]
    assert a.obs["array_row"].max() == 20 and (a.obs["patient"] == "donor7").all()
    assert a.uns["stbench"]["image_path"] == str(tmp_path / "other.png")
    assert a.uns["stbench"]["pixel_size_um"] == 0.25
    with pytest.warns(UserWarning):
        b = AnnDataReader().read_slide(tmp_path, "s1", patient="P1")
    assert (b.obs["patient"] == "P1").all()


def test_anndata_reader_errors(tmp_path):
    with pytest.raises(DataError, match=r"file .*s1\.h5ad does not exist") as err:
        AnnDataReader().read_slide(tmp_path, "s1")
    _one_line(err)
    _write_h5ad(tmp_path, image=None)
    with pytest.raises(DataError, match=r"no image; set params image"):
        AnnDataReader().read_slide(tmp_path, "s1")
    with pytest.raises(DataError, match=r"image .*missing\.tif does not exist"):
        AnnDataReader().read_slide(tmp_path, "s1", params={"image": "missing.tif"})
    a = _write_h5ad(tmp_path)
    a.X[0, 0] = -1
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(DataError, match=r"obsm\['spatial'\] is missing"):
        AnnDataReader().read_slide(tmp_path, "neg")
    a.obsm["spatial"] = np.full((12, 2), 10.0)
    a.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(DataError, match=r"anndata slide 'neg' .*negative values") as err:
        AnnDataReader().read_slide(tmp_path, "neg", params={"image": "he.png"})
    _one_line(err)
    (tmp_path / "bad.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"cannot read .*bad\.h5ad"):
        AnnDataReader().read_slide(tmp_path, "bad")


def test_grid_from_coordinates_on_a_hex_lattice():
    rows, cols = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (rows + cols) % 2 == 0
    xy = np.column_stack([cols[keep] * 69.0, rows[keep] * 119.5])
    r, c = grid_from_coordinates(xy)
    np.testing.assert_array_equal(r, rows[keep])
    np.testing.assert_array_equal(c, cols[keep])


def test_readers_have_names_and_versions():
    assert (VisiumReader.name, STLegacyReader.name, AnnDataReader.name) == ("visium", "st-legacy", "anndata")
    assert VisiumReader.version == STLegacyReader.version == AnnDataReader.version == "1"


def test_a_few_spots_outside_the_image_warn_many_raise(tmp_path, caplog):
    from stbench.data.readers.checks import check_in_image

    xy = np.array([[10.0, 10.0]] * 19 + [[500.0, 10.0]])
    check_in_image(xy, 1.0, (100, 100), tmp_path / "img.png", "slide S")
    assert any("1 of 20 spot centres lie outside" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="3 of 20 spot centres lie outside"):
        check_in_image(np.array([[10.0, 10.0]] * 17 + [[500.0, 10.0]] * 3), 1.0, (100, 100), tmp_path / "img.png", "slide S")
