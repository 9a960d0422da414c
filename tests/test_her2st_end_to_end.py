"""The real data path on the FULL her2st patient C sections (C2-C6) through the local mirror.

Needs ../shared/data (or STBENCH_TEST_DATA): skipped without it. The same path on the committed
her2st_mini fixture runs always, in test_fixture_end_to_end.py."""
import json

import numpy as np
import pytest

from conftest import SHARED_DATA

pytestmark = pytest.mark.full_data
MIRROR = SHARED_DATA / "her2st"


@pytest.fixture(scope="module")
def her2st_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("her2st")
    env = {"STBENCH_DATA": str(root / "data"), "STBENCH_CACHE": str(root / "cache"), "STBENCH_MIRROR": str(MIRROR)}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def fetched(her2st_env):
    from stbench.cli import cli
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["fetch", "her2st_C_HVG"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return her2st_env


def test_prepare_builds_one_shared_patch_cache(fetched, cli):
    result = cli("prepare", "her2st_C_HVG")
    assert result.exit_code == 0, result.output
    files = sorted((fetched / "cache" / "patches" / "her2st").glob("*/256px-native.h5"))
    assert [f.parent.name for f in files] == ["C2", "C3", "C4", "C5", "C6"]
    import h5py

    with h5py.File(files[0], "r") as f:
        assert f["images"].shape == (187, 256, 256, 3) and f["images"].dtype == np.uint8
        assert f["images"].chunks == (1, 256, 256, 3)
        assert int(f.attrs["n_dropped"]) == 0 and bool(f.attrs["complete"])
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert cli("prepare", "her2st_C_HEG").exit_code == 0  # same slides, other gene set: cache reused
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_prepared_fold_contents(fetched):
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(env={}).datasets.get("her2st_C_HVG")
    fold = ds.folds("C3")[0]
    prepared = ds.prepare(fold, "strict")
    assert [s.slide_id for s in prepared.train] == ["C2", "C4", "C5", "C6"]
    (q,) = prepared.queries
    assert q.expression is None and len(q) == 180 and prepared.truth["C3"].shape == (180, len(prepared.genes))
    assert 2000 < len(prepared.genes) < 5000 and list(prepared.genes) == sorted(prepared.genes)
    assert prepared.info["gene_set"] == "hvg" and prepared.info["harmony_scope"] == "reference slides"
    c2 = prepared.train[0]
    assert c2.images.shape == (187, 256, 256, 3) and 0.6 < c2.pixel_size_um < 0.8
    assert c2.barcodes[0].count("x") == 1 and c2.grid.shape == (187, 2)
    # the query truth is its own log-normalised expression (strict): non-negative, unlike Harmony output
    assert prepared.truth["C3"].min() >= 0


def test_second_prepare_reads_the_prepared_cache(fetched, monkeypatch):
    from stbench.data import catalog_dataset
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(env={}).datasets.get("her2st_C_HVG")
    fold = ds.folds("C5")[0]
    first = ds.prepare(fold, "paper")
    monkeypatch.setattr(catalog_dataset, "prepare_expression", lambda *a, **k: pytest.fail("recomputed"))
    fresh = get_plugin_manager(env={}).datasets.get("her2st_C_HVG")
    second = fresh.prepare(fold, "paper")
    assert second.genes == first.genes and np.array_equal(second.truth["C5"], first.truth["C5"])


@pytest.mark.parametrize("model, protocol", [("mean", "strict"), ("random-k", "strict"), ("mean", "paper"), ("random-k", "paper")])
def test_baselines_run_on_five_folds(fetched, cli, tmp_path, model, protocol):
    out = tmp_path / "res"
    result = cli("run", "--model", model, "--dataset", "her2st_C_HVG", "--protocol", protocol, "--out", str(out))
    assert result.exit_code == 0, result.output
    (path,) = (out / model).glob(f"her2st_C_HVG.{protocol}.*.json")
    data = json.loads(path.read_text())
    assert [f["query"] for f in data["folds"]] == ["C2", "C3", "C4", "C5", "C6"]
    assert [f["n_spots"] for f in data["folds"]] == [187, 180, 184, 181, 178]
    assert data["summary"]["hit@3"]["mean"] > 0.5
    if model == "random-k":
        assert abs(data["summary"]["pearson"]["mean"]) < 0.1
    else:
        assert data["summary"]["pearson"]["mean"] is None


def test_corrupt_patch_file_is_rebuilt(fetched, caplog):
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(env={}).datasets.get("her2st_C_HVG")
    path = ds.patches("C6")
    path.write_bytes(path.read_bytes()[:4096])
    rebuilt = get_plugin_manager(env={}).datasets.get("her2st_C_HVG").patches("C6")
    assert rebuilt == path and path.stat().st_size > 1_000_000
    assert any("rebuilding" in r.getMessage() for r in caplog.records)


def test_cache_commands(fetched, cli):
    assert cli("prepare", "her2st_C_HVG").exit_code == 0
    listed = cli("cache", "ls", "--json")
    rows = json.loads(listed.output)
    patches = {r["key"] for r in rows if r["kind"] == "patches"}
    assert patches >= {"her2st/C2/256px-native", "her2st/C6/256px-native"} and all(r["valid"] for r in rows)
    assert cli("cache", "verify").exit_code == 0
    path = fetched / "cache" / "patches" / "her2st" / "C3" / "256px-native.h5"
    path.write_bytes(b"not hdf5")
    bad = cli("cache", "verify")
    assert bad.exit_code == 1 and "INVALID" in bad.output and "C3" in bad.output
    cleared = cli("cache", "clear", "--pattern", "her2st/C3")
    assert cleared.exit_code == 0 and cleared.output.startswith("removed 1 file(s)") and not path.exists()
