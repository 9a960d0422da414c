import json
import math

import numpy as np
import pytest

from stbench.plugins import get_plugin_manager
from stbench.report.results import load_result, unpack_floats
from stbench.runner import RunRequest, run
from stbench.data.synthetic import SyntheticDataset
from stbench.eval import metrics as M

from conftest import run_stbench


def test_run_mean_on_synthetic_writes_a_documented_results_file(cli, tmp_path):
    out = tmp_path / "res"
    result = cli("run", "--model", "mean", "--dataset", "synthetic", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "mean on synthetic" in result.output and "ssim" in result.output
    (path,) = list((out / "mean").glob("synthetic.strict.*.json"))
    data = json.loads(path.read_text())
    assert data["schema"] == "stbench.results/1"
    for key in ("model", "dataset", "protocol", "split", "seed", "options", "plugin", "environment", "folds",
                "summary", "wall_seconds", "config_hash"):
        assert key in data
    assert data["environment"]["stbench"] and "python" in data["environment"]
    assert data["plugin"]["name"] == "stbench_baselines" and data["baseline"] is True
    assert len(data["folds"]) == 4 and data["split"] == "all"
    for name in ("rmse", "ssim", "pearson", "hit@1", "hit@2", "hit@3"):
        assert set(data["summary"][name]) >= {"mean", "median", "sd"}
    # the mean baseline is constant per gene: Pearson and RMSE undefined for every gene, never 0
    assert data["summary"]["pearson"]["mean"] is None and data["summary"]["pearson"]["n_nan"] == 4 * 60
    assert data["summary"]["ssim"]["mean"] is not None


def test_results_match_metrics_recomputed_from_scratch(tmp_path):
    plugins = get_plugin_manager(env={})
    res, path = run(plugins, RunRequest("random-k", "synthetic", folds="syn2", options=("k=7",), seed=3), tmp_path)
    ds: SyntheticDataset = plugins.datasets.get("synthetic")
    truth = ds.slide("syn2")[0].expression
    model = plugins.models.get("random-k")(plugins.models.get("random-k").Options(k=7), seed=3)
    model.fit([ds.slide(s)[0] for s in ("syn1", "syn3", "syn4")], ds.genes)
    pred = model.predict(ds.slide("syn2")[0].without_expression())
    loaded = load_result(path)
    r = M.pearson(truth, pred)
    assert np.allclose(unpack_floats(loaded.folds[0]["per_gene"]["pearson"]), r, atol=1e-6)
    assert math.isclose(loaded.summary["pearson"]["mean"], np.nanmean(r), abs_tol=1e-6)
    assert math.isclose(loaded.summary["hit@2"]["mean"], M.hit_at(truth, pred, 2))
    assert loaded.summary["pearson"]["sd"] is None and loaded.changed_options == {"k": 7}  # one fold: no spread
    assert loaded.label == "random-k (k=7)"


def test_summary_over_folds(tmp_path):
    plugins = get_plugin_manager(env={})
    res, _ = run(plugins, RunRequest("random-k", "synthetic", folds="syn1,syn2"), None)
    means = [f["scores"]["ssim"]["mean"] for f in res.folds]
    assert math.isclose(res.summary["ssim"]["mean"], np.mean(means))
    assert math.isclose(res.summary["ssim"]["sd"], np.std(means, ddof=1))
    medians = [f["scores"]["ssim"]["median"] for f in res.folds]
    assert math.isclose(res.summary["ssim"]["median"], np.mean(medians))


def test_same_request_same_config_hash_and_file(tmp_path):
    plugins = get_plugin_manager(env={})
    _, a = run(plugins, RunRequest("mean", "synthetic", folds="syn1"), tmp_path)
    _, b = run(plugins, RunRequest("mean", "synthetic", folds="syn1"), tmp_path)
    _, c = run(plugins, RunRequest("mean", "synthetic", folds="syn2"), tmp_path)
    assert a == b and a != c


@pytest.mark.parametrize("args, message", [
    (["--model", "meen", "--dataset", "synthetic"], "unknown model 'meen'; did you mean 'mean'?"),
    (["--model", "mean", "--dataset", "synthetik"], "unknown dataset 'synthetik'; did you mean 'synthetic'?"),
    (["--model", "random-k", "--dataset", "synthetic", "-o", "k"], "malformed option 'k': expected key=value"),
    (["--model", "random-k", "--dataset", "synthetic", "-o", "k=many"], "option 'k' of model 'random-k' expects an integer, got 'many'"),
    (["--model", "random-k", "--dataset", "synthetic", "-o", "k=0"], "option 'k' of model 'random-k' must be >= 1, got 0"),
    (["--model", "mean", "--dataset", "synthetic", "--folds", "syn9"], "dataset 'synthetic' has no slide 'syn9'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, message):
    out = tmp_path / "out"
    result = cli("run", *args, "--out", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stbench: error: " + message)
    assert "Traceback" not in result.output
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("run", "--model", "mean", "--dataset", "synthetic", "--out", str(blocker / "sub"))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"stbench: error: output folder {blocker / 'sub' / 'mean'} is not writable")


def test_python_dash_m_entry(tmp_path):
    done = run_stbench("run", "--model", "mean", "--dataset", "synthetic", "--folds", "syn1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "results:" in done.stdout
    bad = run_stbench("run", "--model", "heclp", "--dataset", "synthetic")
    assert bad.returncode == 2 and bad.stderr.strip() == "stbench: error: unknown model 'heclp'; did you mean 'heclip'?"


def test_environment_records_the_torch_thread_count():
    """Training on CPU reproduces bit for bit only at the same torch thread count."""
    import torch

    from stbench.report.results import environment

    assert environment("cpu")["torch_threads"] == torch.get_num_threads()
