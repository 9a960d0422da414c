"""Every mistake a user can make is one line on stderr, exit 2, nothing half-written; damaged or foreign
files are never trusted; tables do not overstate what the runs show."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from anndata_slides import write_catalog, write_slides
from stbench.errors import OptionError, StbenchError

TINY_HECLIP = ("-o", "encoder=test_efficientnet", "-o", "pretrained=false", "-o", "epochs=1", "-o", "batch_size=16",
               "-o", "input_px=16", "-o", "top_k=5")


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("stbench: error: "), result.stderr
    return lines[0][len("stbench: error: "):]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("model, option, message", [
    ("heclip", "lr=nan", "option 'lr' of model 'heclip' must be a finite number, got nan"),
    ("heclip", "lr=-1", "option 'lr' of model 'heclip' must be >= 0, got -1"),
    ("heclip", "dropout=2", "option 'dropout' of model 'heclip' must be >= 0 and < 1, got 2"),
    ("heclip", "input_px=0", "option 'input_px' of model 'heclip' must be >= 1, got 0"),
    ("bleep", "batch_size=1", "option 'batch_size' of model 'bleep' must be >= 2, got 1"),
    ("stnet", "momentum=1", "option 'momentum' of model 'stnet' must be >= 0 and < 1, got 1"),
    ("histogene", "epochs=0", "option 'epochs' of model 'histogene' must be >= 1, got 0"),
    ("random-k", "k=-3", "option 'k' of model 'random-k' must be >= 1, got -3"),
])
def test_an_option_out_of_its_range_is_one_line(cli, tmp_path, model, option, message):
    out = tmp_path / "out"
    result = cli("run", "--model", model, "--dataset", "synthetic", "-o", option, "--out", str(out))
    assert one_error_line(result) == message
    assert files_under(out) == []


def test_ranges_hold_for_options_built_in_python_and_survive_a_subclass_default():
    from stbench_bleep.model import BLEEP
    from stbench_heclip.model import HECLIP

    with pytest.raises(OptionError, match="option 'temperature' of model 'heclip' must be > 0, got 0"):
        HECLIP(HECLIP.Options(temperature=0.0))
    with pytest.raises(OptionError, match="option 'batch_size' of model 'bleep' must be >= 2"):
        BLEEP(BLEEP.Options(batch_size=1))  # BLEEP redeclares batch_size's default; the base range still holds
    HECLIP(HECLIP.Options(lr=0.5))


def test_a_negative_seed_is_one_line(cli, tmp_path):
    result = cli("run", "--model", "mean", "--dataset", "synthetic", "--seed", "-1", "--out", str(tmp_path / "o"))
    assert one_error_line(result) == "seed must be a non-negative integer, got -1; pass --seed 0 or higher"


def test_a_query_slide_named_twice_is_refused(cli, tmp_path):
    result = cli("run", "--model", "mean", "--dataset", "synthetic", "--folds", "syn2,syn2", "--out", str(tmp_path / "o"))
    assert one_error_line(result) == "--folds names slide 'syn2' more than once; list each query slide once"


# ------------------------------------------------------------------------------------- environment


@pytest.fixture
def ad_dataset(tmp_path, monkeypatch):
    """A user catalogue with a tiny anndata dataset under a fresh data root and cache."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_slides(data / "tiny")
    catalog = write_catalog(tmp_path / "my.toml", "tiny")
    monkeypatch.setenv("STBENCH_DATA", str(data))
    monkeypatch.setenv("STBENCH_CACHE", str(cache))
    return catalog, data, cache


@pytest.mark.parametrize("command", [("prepare", "tiny_ad"), ("run", "--model", "mean", "--dataset", "tiny_ad")])
def test_a_cache_that_is_not_a_writable_folder_is_one_line(cli, ad_dataset, tmp_path, monkeypatch, command):
    catalog, _, _ = ad_dataset
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STBENCH_CACHE", str(blocker))
    result = cli("--catalog", str(catalog), *command, *(("--out", str(tmp_path / "o")) if command[0] == "run" else ()))
    message = one_error_line(result)
    assert message.startswith(f"cannot write to the stbench cache {blocker} (") and message.endswith(
        "set STBENCH_CACHE to a writable folder")
    assert files_under(tmp_path / "o") == []


def test_an_absolute_root_in_a_user_catalogue_prepares_and_runs(cli, tmp_path, monkeypatch):
    elsewhere = write_slides(tmp_path / "lab share" / "slides")
    catalog = write_catalog(tmp_path / "my.toml", str(elsewhere))
    monkeypatch.setenv("STBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    assert cli("--catalog", str(catalog), "prepare", "tiny_ad").exit_code == 0
    (key,) = [p.name for p in (tmp_path / "cache" / "patches").iterdir()]
    assert key.startswith("slides-") and len(key) == len("slides-") + 8
    ran = cli("--catalog", str(catalog), "run", "--model", "mean", "--dataset", "tiny_ad", "--out", str(tmp_path / "o"))
    assert ran.exit_code == 0, ran.output
    (path,) = (tmp_path / "o" / "mean").glob("tiny_ad.strict.*.json")
    assert [f["query"] for f in json.loads(path.read_text())["folds"]] == ["s1", "s2", "s3"]


def test_every_command_names_a_plugin_that_failed_to_load(cli, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "colour_knn.py").write_text("import not_a_module_anywhere\n")
    result = cli("--plugins-dir", str(d), "run", "--model", "colour-knn", "--dataset", "synthetic", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "stbench: warning: plugin 'colour_knn' failed to load: ModuleNotFoundError: No module named "
        f"'not_a_module_anywhere' (colour_knn.py:1) [file {d / 'colour_knn.py'}]",
        "stbench: error: unknown model 'colour-knn'; known: bleep, clip, ensemble, heclip, histogene, knn, mean, random-k, ridge, stnet",
    ]
    listed = cli("--plugins-dir", str(d), "list", "models")
    assert listed.exit_code == 0 and "plugin 'colour_knn' failed to load" in listed.stderr


def test_a_diverging_run_says_so_and_what_to_change(cli, tmp_path):
    out = tmp_path / "o"
    result = cli("run", "--model", "heclip", "--dataset", "synthetic", "--folds", "syn2", *TINY_HECLIP, "-o", "lr=1e12",
                 "--out", str(out))
    message = one_error_line(result)
    assert re.fullmatch(r"training diverged: the loss became (nan|inf) at epoch 1 \(step \d+ of \d+\); "
                        r"lower the learning rate \(-o lr=\.\.\., now 1e\+12\) and run again", message), message
    assert files_under(out) == []


def test_histogene_divergence_is_caught_in_its_loop_too():
    from stbench.nn.trainer import TrainingDiverged
    from stbench.testing import fit_tiny
    from stbench_histogene.model import HisToGene

    with pytest.raises(TrainingDiverged, match="training diverged"):
        fit_tiny(HisToGene, ["dim=16", "depth=1", "heads=2", "dim_head=8", "mlp_dim=16", "epochs=3", "patch_crop=16",
                             "lr=1e15"])


def test_an_unreachable_hub_fails_at_once_with_the_way_out(monkeypatch):
    import socket

    from stbench.nn import encoder

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(StbenchError) as e:
        encoder.create_encoder("resnet18", pretrained=True)
    assert "Hugging Face hub (huggingface.co) cannot be reached" in str(e.value) and "-o weights=PATH" in str(e.value)
    assert len(calls) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert encoder.hub_reachable() == (False, "huggingface.co") and len(calls) == 1  # no probe at all


def test_a_source_of_the_wrong_size_is_called_damaged_not_missing(cli, tmp_path, monkeypatch):
    from stbench.data.catalog import parse_entry
    from stbench.data.catalog_dataset import CatalogDataset
    from stbench.errors import DataError
    from stbench.plugins import get_plugin_manager

    monkeypatch.setenv("STBENCH_DATA", str(tmp_path))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "counts.tsv").write_text("cut")
    entry = parse_entry("ds", {"reader": "anndata", "slides": ["a", "b"], "query": ["b"], "genes": {"set": "all"},
                               "root": "ds", "base_url": "https://example.org/",
                               "sources": [{"path": "counts.tsv", "size": 1000}, {"path": "image.png"}]}, "my.toml")
    ds = CatalogDataset(entry, get_plugin_manager(env={}).readers.get("anndata"))
    with pytest.raises(DataError) as e:
        ds.check_present()
    assert str(e.value) == (f"dataset 'ds': {tmp_path / 'ds' / 'counts.tsv'} is damaged or cut (3 bytes, expected 1000) "
                            "and 1 more: run `stbench fetch ds` to download it again")


def test_negative_counts_name_the_counts_file(tmp_path):
    import anndata

    from stbench.errors import DataError
    from stbench.data.readers.anndata_reader import AnnDataReader

    write_slides(tmp_path, slides=("neg",))
    adata = anndata.read_h5ad(tmp_path / "neg.h5ad")
    adata.X = adata.X.toarray() - 10
    adata.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(DataError) as e:
        AnnDataReader().read_slide(tmp_path, "neg")
    assert f"the counts in {tmp_path / 'neg.h5ad'} hold negative values (min -10)" in str(e.value)
    assert "X holds" not in str(e.value)


# ------------------------------------------------------------------------------------- patch cache


def damage_middle(path: Path, n: int = 4096) -> None:
    """Overwrite ``n`` bytes in the middle of the image data, as a bad disk or a stray write would."""
    with h5py.File(path, "r") as f:
        offset = f["images"].id.get_chunk_info(len(f["images"]) // 2).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 1000)
        fh.write(os.urandom(n))


def test_a_damaged_patch_file_is_found_by_verify_and_rebuilt_by_prepare(cli, ad_dataset, caplog):
    catalog, _, cache = ad_dataset
    assert cli("--catalog", str(catalog), "prepare", "tiny_ad").exit_code == 0
    path = cache / "patches" / "tiny" / "s2" / "32px-native.h5"
    damage_middle(path)
    verify = cli("cache", "verify")
    assert verify.exit_code == 1
    assert f"INVALID  patches   {path}  (damaged: patch 12 fails its checksum" in verify.output
    again = cli("--catalog", str(catalog), "prepare", "tiny_ad")
    assert again.exit_code == 0
    assert f"stbench: warning: rebuilding {path}: damaged: patch 12 fails its checksum" in again.stderr
    assert cli("cache", "verify").exit_code == 0


def test_a_checksum_failure_while_training_is_one_line_and_the_rerun_rebuilds(cli, ad_dataset, tmp_path):
    catalog, _, cache = ad_dataset
    args = ("--catalog", str(catalog), "run", "--model", "heclip", "--dataset", "tiny_ad", "--folds", "s3",
            *TINY_HECLIP, "--out", str(tmp_path / "o"))
    assert cli("--catalog", str(catalog), "prepare", "tiny_ad").exit_code == 0
    path = cache / "patches" / "tiny" / "s1" / "32px-native.h5"
    stamp = path.with_name(f".{path.name}.verified")
    damage_middle(path)
    stamp.write_text(json.dumps({"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                                 "inode": path.stat().st_ino}))  # as if the damage happened after verification
    message = one_error_line(cli(*args))
    assert message.startswith(f"patch file {path} is damaged (") and message.endswith(
        "rerun the command: stbench then checks every patch and rebuilds the file")
    assert not stamp.exists() and files_under(tmp_path / "o") == []
    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.output
    assert f"rebuilding {path}: damaged" in rerun.stderr


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_listed_and_cleared_in_every_cache_folder(cli, ad_dataset):
    from stbench.atomic import _host

    catalog, _, cache = ad_dataset
    assert cli("--catalog", str(catalog), "run", "--model", "mean", "--dataset", "tiny_ad", "--folds", "s3",
               "--out", str(cache.parent / "o")).exit_code == 0
    (prepared,) = (cache / "prepared" / "tiny_ad").glob("*.h5")
    dead = prepared.parent / f".{prepared.name}.{_host()}.{dead_pid()}.k3x9.tmp"
    dead.write_bytes(b"x" * 9_500)
    live = prepared.parent / f".other.h5.{_host()}.{os.getpid()}.a1b2.tmp"
    live.write_bytes(b"being written")
    weights = cache / "weights"
    weights.mkdir()
    (weights / "abc-w.pth").write_bytes(b"w")
    rows = {(r["kind"], r["key"]): r for r in json.loads(cli("cache", "ls", "--json").output)}
    assert {k for k, _ in rows} == {"patches", "prepared", "prepared-temp", "weights"}
    assert not rows[("prepared-temp", f"tiny_ad/{dead.name}")]["valid"]
    assert rows[("prepared-temp", f"tiny_ad/{live.name}")]["valid"]
    cleared = cli("cache", "clear", "--kind", "prepared")
    assert cleared.exit_code == 0 and cleared.output.startswith("removed 2 file(s)")  # the matrices and the dead .tmp
    assert not dead.exists() and not prepared.exists() and live.exists()
    assert cli("cache", "clear").exit_code == 0
    assert not (weights / "abc-w.pth").exists() and any((cache / "prepared").rglob("*.tmp"))  # the live writer's


def test_a_rerun_removes_the_temporary_a_killed_prepare_left(ad_dataset, cli):
    from stbench.atomic import _host

    catalog, _, cache = ad_dataset
    args = ("--catalog", str(catalog), "run", "--model", "mean", "--dataset", "tiny_ad", "--folds", "s3",
            "--out", str(cache.parent / "o"))
    assert cli(*args).exit_code == 0
    (prepared,) = (cache / "prepared" / "tiny_ad").glob("*.h5")
    prepared.unlink()
    left = prepared.parent / f".{prepared.name}.{_host()}.{dead_pid()}.zz11.tmp"
    left.write_bytes(b"half a matrix")
    assert cli(*args).exit_code == 0
    assert prepared.exists() and not left.exists()


def test_a_blank_image_warns_at_prepare_and_is_recorded(cli, tmp_path, monkeypatch):
    write_slides(tmp_path / "data" / "tiny", blank=True)
    catalog = write_catalog(tmp_path / "my.toml", "tiny")
    monkeypatch.setenv("STBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    prepared = cli("--catalog", str(catalog), "prepare", "tiny_ad")
    assert prepared.exit_code == 0
    assert "stbench: warning: slide 's1': 25 of 25 patches are blank (one colour, no tissue)" in prepared.stderr
    ran = cli("--catalog", str(catalog), "run", "--model", "mean", "--dataset", "tiny_ad", "--folds", "s3",
              "--out", str(tmp_path / "o"))
    (path,) = (tmp_path / "o" / "mean").glob("*.json")
    assert json.loads(path.read_text())["folds"][0]["info"]["blank_patches"] == {"s1": 25, "s2": 25, "s3": 25}
    assert ran.exit_code == 0


# ------------------------------------------------------------------------------------ results files


@pytest.fixture
def two_runs(tmp_path):
    from stbench.plugins import get_plugin_manager
    from stbench.runner import RunRequest, run

    plugins = get_plugin_manager(env={})
    out = tmp_path / "res"
    _, mean = run(plugins, RunRequest("mean", "synthetic", folds="syn1,syn2"), out)
    _, rand = run(plugins, RunRequest("random-k", "synthetic", folds="syn1,syn2"), out)
    return out, mean, rand


def test_a_hand_edited_summary_is_recomputed_from_the_folds(two_runs, caplog):
    from stbench.report.leaderboard import render_dir
    from stbench.report.results import load_result

    out, _, rand = two_runs
    before = render_dir(out)
    data = json.loads(rand.read_text())
    data["summary"]["pearson"]["mean"] = 0.99
    rand.write_text(json.dumps(data))
    assert load_result(rand).summary["pearson"]["mean"] < 0.5
    assert render_dir(out) == before and "0.990" not in before
    assert any(f"results file {rand}: summary of pearson does not match its folds" in r.getMessage() for r in caplog.records)


def test_a_results_file_without_folds_is_refused_and_skipped(two_runs, cli):
    from stbench.errors import ResultsError
    from stbench.report.results import load_result

    out, _, rand = two_runs
    data = json.loads(rand.read_text())
    data["folds"] = []
    rand.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="has no folds"):
        load_result(rand)
    board = cli("leaderboard", "--results", str(out))
    assert board.exit_code == 0 and "random-k" not in (out / "LEADERBOARD.md").read_text()
    assert f"skipped: results file {rand} has no folds" in board.stderr


def test_bench_renders_the_board_despite_a_foreign_json(cli, tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "notes.json").write_text('{"mine": true}')
    result = cli("bench", "--models", "mean", "--datasets", "synthetic", "--folds", "syn1", "--out", str(out))
    assert result.exit_code == 0 and "1 ran, 0 skipped, 0 failed" in result.output
    assert "| mean *baseline* |" in (out / "LEADERBOARD.md").read_text()
    assert f"skipped: results file {out / 'notes.json'} has schema None" in result.stderr


def test_bench_reruns_a_result_made_by_other_code(cli, tmp_path):
    out = tmp_path / "res"
    args = ("bench", "--models", "mean", "--datasets", "synthetic", "--folds", "syn1", "--out", str(out))
    assert "1 ran, 0 skipped" in cli(*args).output
    assert "0 ran, 1 skipped" in cli(*args).output
    (path,) = (out / "mean").glob("*.json")
    data = json.loads(path.read_text())
    assert set(data["extra"]["versions"]) == {"stbench", "plugin", "model", "dataset"}
    data["extra"]["versions"]["model"] = "0"
    path.write_text(json.dumps(data))
    again = cli(*args)
    assert "1 ran, 0 skipped" in again.output and json.loads(path.read_text())["extra"]["versions"]["model"] == "1"
    data = json.loads(path.read_text())
    data["extra"].pop("versions")
    data["environment"]["stbench"] = "0.0.1"  # a file from before versions were recorded: stbench's is compared
    path.write_text(json.dumps(data))
    assert "1 ran, 0 skipped" in cli(*args).output


# ------------------------------------------------------------------------------------------- tables


def test_one_fold_shows_n_1_not_a_zero_spread_and_excluded_genes_per_fold(cli, tmp_path):
    one = cli("run", "--model", "random-k", "--dataset", "synthetic", "--folds", "syn2", "--out", str(tmp_path / "a"))
    assert "(n=1)" in one.output and "± 0.000" not in one.output
    assert cli("leaderboard", "--results", str(tmp_path / "a")).exit_code == 0
    board = (tmp_path / "a" / "LEADERBOARD.md").read_text()
    assert "(n=1)" in board and "± 0.000" not in board
    three = cli("run", "--model", "mean", "--dataset", "synthetic", "--folds", "all", "--out", str(tmp_path / "b"))
    (path,) = (tmp_path / "b" / "mean").glob("*.json")
    per_fold = [str(f["scores"]["pearson"]["n_nan"]) for f in json.loads(path.read_text())["folds"]]
    assert len(per_fold) == 4 and ", ".join(per_fold) in three.output


def test_rows_of_different_splits_are_separate_boards(cli, tmp_path):
    out = tmp_path / "r"
    for folds in ("syn2", "all"):
        assert cli("run", "--model", "random-k", "--dataset", "synthetic", "--folds", folds, "--out", str(out)).exit_code == 0
    assert cli("leaderboard", "--results", str(out)).exit_code == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert "## synthetic · strict · split all\n" in board and "## synthetic · strict · split syn2\n" in board
    tables = board.split("\n\n")
    assert sum("| random-k *baseline* |" in t for t in tables) == 4  # 2 boards + 2 Hit@T tables, one row each
    assert all(t.count("| random-k *baseline* |") <= 1 for t in tables)


def test_reproduce_commands_name_a_user_catalogue(cli, ad_dataset, tmp_path):
    catalog, _, _ = ad_dataset
    out = tmp_path / "o"
    assert cli("--catalog", str(catalog), "run", "--model", "mean", "--dataset", "tiny_ad", "--out", str(out)).exit_code == 0
    assert cli("run", "--model", "mean", "--dataset", "synthetic", "--out", str(out)).exit_code == 0
    assert cli("leaderboard", "--results", str(out)).exit_code == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert f"stbench --catalog {catalog} run --model mean --dataset tiny_ad --protocol strict" in board
    assert "\nstbench run --model mean --dataset synthetic --protocol strict" in board


# ------------------------------------------------------------------------------------------- extras


def test_a_missing_optional_package_names_the_extra(cli, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert cli("run", "--model", "random-k", "--dataset", "synthetic", "--folds", "syn2", "--out", str(out)).exit_code == 0
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    plotted = cli("plot", str(out), "--out", str(tmp_path / "f"), "--kind", "box")
    assert one_error_line(plotted) == ("stbench plot needs the package 'matplotlib', which is not installed; "
                                       "pip install \"stbench[figures]\" (or stbench[all])")
    assert files_under(tmp_path / "f") == []


def test_declared_dependencies_match_what_is_imported():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "pooch" not in core and "matplotlib" not in core and "umap" not in core and "pyarrow" in core
    extras = project["optional-dependencies"]
    assert any("matplotlib" in d for d in extras["figures"]) and any("umap-learn" in d for d in extras["figures"])
    assert "stbench[all]" in extras["dev"]


def test_bench_keeps_a_result_written_before_the_model_gained_an_option(cli, tmp_path):
    out = tmp_path / "res"
    args = ("bench", "--models", "random-k", "--datasets", "synthetic", "--folds", "syn1", "--out", str(out))
    assert "1 ran, 0 skipped" in cli(*args).output
    (path,) = (out / "random-k").glob("*.json")
    data = json.loads(path.read_text())
    data["config"]["options"] = {}  # as written when random-k had no options: k was its default, 50
    data["config_hash"] = "0123456789ab"
    path.unlink()
    (out / "random-k" / "synthetic.strict.0123456789ab.json").write_text(json.dumps(data))
    assert "0 ran, 1 skipped" in cli(*args).output
    changed = cli("bench", "--models", "random-k", "--datasets", "synthetic", "--folds", "syn1", "-o", "k=5",
                  "--out", str(out))
    assert "1 ran, 0 skipped" in changed.output  # another value of the option is another configuration
