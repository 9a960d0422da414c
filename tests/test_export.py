from __future__ import annotations

import shutil
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import anndata  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stbench.errors import ResultsError, StbenchError  # noqa: E402
from stbench.report.export import (  # noqa: E402
    LONG_COLUMNS, export_run, long_table, model_id, per_gene_table, to_anndata, write_h5ad, write_table,
)
from stbench.plugins import get_plugin_manager  # noqa: E402
from stbench.report.predictions import load_predictions, predictions_path  # noqa: E402
from stbench.runner import RunRequest, run  # noqa: E402


@pytest.fixture(scope="module", params=[("mean", "default"), ("random-k", "syn1,syn2")], ids=["mean", "random-k"])
def done(request, tmp_path_factory):
    model, folds = request.param
    result, path = run(get_plugin_manager(), RunRequest(model=model, dataset="synthetic", folds=folds, device="cpu"),
                       out_dir=tmp_path_factory.mktemp(model))
    slides, _ = load_predictions(predictions_path(path))
    return result, path, slides


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


def test_long_table_rows_match_the_predictions_file(done):
    result, _, slides = done
    table = long_table(result, slides)
    assert list(table.columns) == LONG_COLUMNS
    assert len(table) == sum(s.true.size for s in slides)
    assert table["exprs"].dtype == np.float32 and table["pred"].dtype == np.float32
    assert (table.drop(columns=["exprs", "pred"]).dtypes == "category").all()
    assert model_id(result) == f"{result.model}-{result.config_hash[:8]}"
    rng = np.random.default_rng(0)
    start = 0
    for s in slides:
        n, g = s.true.shape
        block = table.iloc[start:start + n * g]
        start += n * g
        assert set(block["img_id"]) == {s.query} and set(block["train_fold"]) == {s.fold}
        assert set(block["model_id"]) == {model_id(result)} and set(block["pred_type"]) == {"test"}
        spots, genes = rng.integers(0, n, 50), rng.integers(0, g, 50)
        rows = block.iloc[spots * g + genes]
        assert np.array_equal(rows["exprs"].to_numpy(), s.true[spots, genes].astype(np.float32))
        assert np.array_equal(rows["pred"].to_numpy(), s.pred[spots, genes].astype(np.float32))
        assert list(rows["gene"]) == [s.genes[j] for j in genes]
        x, y = np.rint(s.coords[spots]).astype(int).T
        assert list(rows["patch_id"]) == [f"{s.query}_{a}x{b}" for a, b in zip(x, y)]
        assert list(block["gene"].iloc[:g]) == list(s.genes)
        assert block["patch_id"].iloc[::g].is_unique
    by_barcode = long_table(result, slides, patch_id="barcode")
    assert list(by_barcode["patch_id"].iloc[: slides[0].true.size: len(slides[0].genes)]) == list(slides[0].barcodes)


def test_per_gene_table_holds_the_results_json_values(done):
    result, _, _ = done
    table = per_gene_table(result)
    assert list(table.columns) == ["model_id", "train_fold", "img_id", "gene", "rmse", "ssim", "pearson"]  # registration order
    assert len(table) == sum(len(result.genes(i)) for i in range(len(result.folds)))
    first = table[table["img_id"] == result.folds[0]["query"]]
    assert list(first["gene"]) == result.genes(0)
    np.testing.assert_array_equal(first["rmse"].to_numpy(), result.per_gene(0, "rmse"))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_tables_round_trip(done, tmp_path, suffix):
    result, _, slides = done
    table = long_table(result, slides)
    path = write_table(table, tmp_path / f"long{suffix}")
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(path), table)
    else:
        back = pd.read_csv(path, dtype={"exprs": np.float32, "pred": np.float32, "img_id": str, "patch_id": str})
        pd.testing.assert_frame_equal(back, table.astype({c: object for c in table.columns[table.dtypes == "category"]}))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["long.tsv", "long", "long.h5ad"])
def test_unknown_table_suffix_is_a_one_line_error(tmp_path, name):
    with pytest.raises(StbenchError) as err:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / name)
    message = str(err.value)
    assert "\n" not in message and ".csv" in message and ".parquet" in message
    assert (name.rsplit(".", 1)[1] if "." in name else "(none)") in message
    assert list(tmp_path.iterdir()) == []


def test_failed_table_write_leaves_no_temp_file(tmp_path):
    bad = pd.DataFrame({"a": [1, "x", 2.5]})
    with pytest.raises(Exception):
        write_table(bad, tmp_path / "bad.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
def test_h5ad_round_trip_and_scanpy_plot(done, tmp_path):
    import scanpy as sc

    result, _, slides = done
    s = slides[0]
    adata = to_anndata(s, result)
    path = write_h5ad(adata, tmp_path / "slide.h5ad")
    assert leftovers(tmp_path) == []
    back = anndata.read_h5ad(path)
    assert back.shape == s.true.shape and list(back.var_names) == list(s.genes)
    assert list(back.obs_names) == list(s.barcodes)
    assert set(back.obs["slide"]) == {s.query} and set(back.obs["fold"]) == {s.fold}
    np.testing.assert_array_equal(back.X, s.true.astype(np.float32))
    np.testing.assert_array_equal(back.layers["true"], s.true.astype(np.float32))
    np.testing.assert_array_equal(back.layers["pred"], s.pred.astype(np.float32))
    assert back.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(back.obsm["spatial"], s.coords)
    i = next(i for i, f in enumerate(result.folds) if f["query"] == s.query and f["fold"] == s.fold)
    for metric in ("pearson", "rmse", "ssim"):
        np.testing.assert_array_equal(back.var[metric].to_numpy(), result.per_gene(i, metric))
    lib = back.uns["spatial"][s.query]
    np.testing.assert_array_equal(lib["images"]["hires"], s.thumbnail)
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(s.thumbnail_scale)
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(s.spot_diameter_px)
    in_thumb = s.coords * s.thumbnail_scale
    h, w = s.thumbnail.shape[:2]
    assert (in_thumb >= 0).all() and (in_thumb[:, 0] <= w).all() and (in_thumb[:, 1] <= h).all()
    assert back.uns["stbench"]["config_hash"] == result.config_hash
    assert back.uns["stbench"]["model_id"] == model_id(result)
    axes = sc.pl.spatial(back, color=s.genes[0], layer="pred", show=False)
    assert axes and all(isinstance(ax, matplotlib.axes.Axes) for ax in axes)
    matplotlib.pyplot.close("all")


@pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
def test_anndata_without_result_or_thumbnail_and_with_repeated_barcodes(done):
    import scanpy as sc

    _, _, slides = done
    s = replace(slides[0], barcodes=np.asarray(["b"] * len(slides[0].barcodes)), thumbnail=None)
    adata = to_anndata(s)
    assert adata.obs_names.is_unique and list(adata.var.columns) == []
    assert adata.uns["stbench"] == {"fold": s.fold, "query": s.query, "pred_type": "test"}
    assert sc.pl.spatial(adata, color=s.genes[0], img_key=None, show=False)
    matplotlib.pyplot.close("all")


def test_export_run_writes_every_file(done, tmp_path):
    result, path, slides = done
    out = tmp_path / "export"
    written = export_run(path, out, formats=("parquet", "h5ad"))
    mid = model_id(result)
    expected = [f"{mid}.long.parquet", f"{mid}.per_gene.parquet"] + [f"{mid}.{s.query}.h5ad" for s in slides]
    assert [p.name for p in written] == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert len(pd.read_parquet(out / f"{mid}.long.parquet")) == sum(s.true.size for s in slides)
    assert export_run(path, out)[0].name == f"{mid}.long.csv"


def test_h5ad_names_are_safe_and_distinct(done):
    from stbench.report.export import _slide_names

    _, _, slides = done
    s = slides[0]
    twice = [replace(s, fold="a", query="x/y z"), replace(s, fold="b", query="x/y z"), replace(s, query="solo")]
    assert _slide_names(twice) == ["a.x_y_z", "b.x_y_z", "solo"]


def test_export_run_without_predictions_says_how_to_get_them(done, tmp_path):
    _, path, _ = done
    lonely = shutil.copy(path, tmp_path / path.name)
    with pytest.raises(ResultsError, match="without --no-predictions"):
        export_run(lonely, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_run_rejects_unknown_formats_before_writing(done, tmp_path):
    _, path, _ = done
    with pytest.raises(StbenchError, match="unknown export format 'xlsx'; choose from csv"):
        export_run(path, tmp_path / "out", formats=("csv", "xlsx"))
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_no_temp_files(done, tmp_path, monkeypatch):
    _, path, _ = done

    def broken(self, filename, **kwargs):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        export_run(path, out, formats=("h5ad",))
    assert list(out.iterdir()) == []


def test_cli_exports_every_run_of_a_results_folder(cli, done, tmp_path):
    result, path, slides = done
    out = tmp_path / "exported"
    res = cli("export", str(path.parent.parent), "--out", str(out), "--format", "parquet,h5ad")
    assert res.exit_code == 0, res.stderr
    mid = model_id(result)
    names = sorted(p.name for p in out.iterdir())
    assert f"{mid}.long.parquet" in names and f"{mid}.per_gene.parquet" in names
    assert sum(n.endswith(".h5ad") for n in names) == len(slides)
    assert len(pd.read_parquet(out / f"{mid}.long.parquet")) == sum(s.true.size for s in slides)
    bad = cli("export", str(tmp_path / "nothing"), "--out", str(out))
    assert bad.exit_code == 2 and "neither a results file nor a folder" in bad.stderr
