import json

from stbench.leaderboard import render, render_dir
from stbench.plugins import get_plugin_manager
from stbench.results import load_result
from stbench.runner import RunRequest, run

import pytest


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    plugins = get_plugin_manager(env={})
    for model, opts in (("mean", ()), ("random-k", ()), ("random-k", ("k=5",))):
        run(plugins, RunRequest(model, "synthetic", folds="syn1,syn2", options=opts), d)
    return d


def test_render_is_pure_and_marks_baselines(results_dir):
    text = render_dir(results_dir)
    assert text == render_dir(results_dir)
    assert "## synthetic · strict" in text and "Protocol: **strict**" in text
    assert "| mean *baseline* | n/a | n/a |" in text
    assert "| random-k (k=5) *baseline* |" in text
    assert "RMSE ↓ median" in text and "SSIM ↑ mean" in text and "Hit@3 ↑" in text


def test_cells_are_mean_pm_sd_over_folds(results_dir):
    paths = sorted(results_dir.rglob("*.json"))
    r = next(load_result(p) for p in paths if load_result(p).label == "random-k")
    s = r.summary["ssim"]
    assert f"{s['median']:.3f} ± {s['median_sd']:.3f} | {s['mean']:.3f} ± {s['sd']:.3f}" in render([r])


def test_best_non_baseline_is_bold(results_dir):
    paths = sorted(results_dir.rglob("*.json"))
    results = [load_result(p) for p in paths]
    for r in results:
        if r.label == "random-k (k=5)":
            r.baseline = False
    row = next(l for l in render(results).splitlines() if l.startswith("| random-k (k=5) |"))
    assert row.count("**") >= 2


def test_cli_writes_and_checks(cli, results_dir, tmp_path):
    out = tmp_path / "LB.md"
    assert cli("leaderboard", "--results", str(results_dir), "--check", "--out", str(out)).exit_code == 1
    written = cli("leaderboard", "--results", str(results_dir), "--out", str(out))
    assert written.exit_code == 0 and out.read_text() == render_dir(results_dir)
    assert cli("leaderboard", "--results", str(results_dir), "--check", "--out", str(out)).exit_code == 0
    out.write_text(out.read_text().replace("n/a", "0.000", 1))
    stale = cli("leaderboard", "--results", str(results_dir), "--check", "--out", str(out))
    assert stale.exit_code == 1 and "is stale" in stale.stderr


def test_corrupt_results_file_is_named(cli, results_dir, tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "bad.json").write_text("{ not json")
    result = cli("leaderboard", "--results", str(d))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"stbench: error: results file {d / 'bad.json'} is unreadable (JSONDecodeError); delete it and rerun the run"
    (d / "bad.json").write_text(json.dumps({"schema": "other/9"}))
    assert "has schema 'other/9'" in cli("leaderboard", "--results", str(d)).stderr


def test_missing_results_folder(cli, tmp_path):
    result = cli("leaderboard", "--results", str(tmp_path / "none"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_statistics_columns_against_the_first_row(results_dir):
    import numpy as np

    from stbench.stats import bootstrap_median_ci, paired_wilcoxon

    results = [load_result(p) for p in sorted(results_dir.rglob("*.json"))]
    for r in results:
        r.baseline = False
    text = render(results)
    assert "Pearson median 95% CI | p vs best |" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| random-k")}
    top_label = next(l for l in text.splitlines() if l.endswith("| best | 2 |")).split(" | ")[0][2:]
    top = next(r for r in results if r.label == top_label)
    other = next(r for r in results if r.label.startswith("random-k") and r.label != top_label)
    pooled = lambda r: np.concatenate([r.per_gene(i, "pearson") for i in range(len(r.folds))])  # noqa: E731
    lo, hi = bootstrap_median_ci(pooled(other), n_resamples=1000, seed=0)
    p = paired_wilcoxon(pooled(other), pooled(top)).p_value
    assert f"[{lo:.3f}, {hi:.3f}] | {p:.1e} |" in rows[other.label]
    mean_row = next(l for l in text.splitlines() if l.startswith("| mean |"))
    assert mean_row.endswith("| n/a | n/a | 2 |")
