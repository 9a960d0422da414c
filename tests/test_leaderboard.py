import json
import shutil
from pathlib import Path

import numpy as np

from stbench.report.leaderboard import render, render_dir
from stbench.plugins import get_plugin_manager
from stbench.report.results import load_result
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


def test_a_corrupt_or_foreign_results_file_is_skipped_with_one_warning_naming_it(cli, results_dir, tmp_path):
    d = tmp_path / "r"
    shutil.copytree(results_dir, d)
    good = cli("leaderboard", "--results", str(d), "--out", str(tmp_path / "good.md"))
    assert good.exit_code == 0 and good.stderr == ""
    (d / "bad.json").write_text("{ not json")
    (d / "foreign.json").write_text(json.dumps({"schema": "other/9"}))
    result = cli("leaderboard", "--results", str(d), "--out", str(tmp_path / "board.md"))
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"stbench: warning: skipped: results file {d / 'bad.json'} is unreadable (JSONDecodeError); delete it and rerun the run",
        f"stbench: warning: skipped: results file {d / 'foreign.json'} has schema 'other/9', expected 'stbench.results/1'; rerun the run",
    ]
    assert (tmp_path / "board.md").read_text() == (tmp_path / "good.md").read_text()


def test_missing_results_folder(cli, tmp_path):
    result = cli("leaderboard", "--results", str(tmp_path / "none"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_statistics_columns_against_the_first_row(results_dir):
    import numpy as np

    from stbench.eval.stats import bootstrap_median_ci, paired_wilcoxon

    results = [load_result(p) for p in sorted(results_dir.rglob("*.json"))]
    for r in results:
        r.baseline = False
    text = render(results).split("What these results show")[0]
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


def _as(result, model, baseline=False, seed=None, claims=()):
    """The run as if made by ``model``, with the card that model would declare."""
    import copy

    r = copy.deepcopy(result)
    r.model, r.baseline = model, baseline
    r.extra["card"] = {"baseline": baseline, "calibration": "", "claims": list(claims),
                       "kind": "baseline" if baseline else "trained"}
    if seed is not None:
        r.seed = seed
    return r


@pytest.fixture(scope="module")
def loaded(results_dir):
    results = {r.label: r for r in (load_result(p) for p in sorted(results_dir.rglob("*.json")))}
    return results["random-k"], results["random-k (k=5)"], results["mean"]


def test_ablation_table_compares_variants_with_the_reference(loaded):
    from stbench.eval.stats import paired_wilcoxon

    rk, rk5, mean = loaded
    text = render([_as(rk, "random-k"), _as(rk5, "random-k"), mean])
    assert "Ablations of `random-k` (reference: random-k):" in text
    lines = text.split("Ablations of")[1].splitlines()
    ref = next(l for l in lines if l.startswith("| random-k |"))
    assert ref.endswith("| — | reference |")
    test = paired_wilcoxon(np.concatenate([rk5.per_gene(i, "pearson") for i in range(2)]),
                           np.concatenate([rk.per_gene(i, "pearson") for i in range(2)]))
    k5 = next(l for l in lines if l.startswith("| random-k (k=5) |"))
    assert k5.endswith(f"| {test.median_difference:+.3f} | {test.p_value:.1e} |")
    assert "Ablations of" not in render([rk, mean])


def test_findings_state_the_papers_claims_with_p_values(loaded):
    from stbench.eval.stats import paired_wilcoxon

    rk, rk5, mean = loaded
    heclip, bleep = _as(rk5, "heclip", claims=("bleep", "clip")), _as(rk, "bleep")
    text = render([heclip, bleep, rk, mean])
    pa = np.concatenate([rk5.per_gene(i, "pearson") for i in range(2)])
    pb = np.concatenate([rk.per_gene(i, "pearson") for i in range(2)])
    test = paired_wilcoxon(pa, pb)
    line = next(l for l in text.splitlines() if l.startswith("- The paper's claim that heclip beats bleep"))
    assert f"median per-gene difference {test.median_difference:+.3f}, paired Wilcoxon p = {test.p_value:.1e}" in line
    expected = ("holds here" if test.p_value < 0.05 and test.median_difference > 0 else
                "does not hold here" if test.p_value < 0.05 else "is not supported here")
    assert expected in line
    assert "heclip beats clip" not in text
    assert "- Above the random-k baseline" in text
    # a third-party model that declares a claim gets the same sentence; files from before cards were
    # recorded take the claim from the installed plugin's card
    mine = _as(rk5, "my-model", claims=("bleep",))
    assert "- The paper's claim that my-model beats bleep" in render([mine, bleep, rk, mean])
    old = _as(rk5, "heclip")
    del old.extra["card"]
    from stbench.report.leaderboard import BoardContext

    context = BoardContext(metrics=BoardContext.core().metrics, cards={"heclip": {"claims": ["bleep"]}})
    assert "- The paper's claim that heclip beats bleep" in render([old, bleep, rk, mean], context=context)
    assert "- The paper's claim that heclip beats bleep" not in render([old, bleep, rk, mean])


def test_seeds_are_pooled_into_one_row(loaded):
    from stbench.eval.scoring import summarise

    rk, rk5, mean = loaded
    seed1 = _as(rk5, "random-k", baseline=True, seed=1)
    seed1.changed_options, seed1.extra = rk.changed_options, dict(rk.extra)
    text = render([rk, seed1, mean]).split("What these results show")[0]
    row = next(l for l in text.splitlines() if l.startswith("| random-k *baseline*"))
    s = summarise(rk.folds + seed1.folds)["ssim"]
    assert f"{s['median']:.3f} ± {s['median_sd']:.3f} | {s['mean']:.3f} ± {s['sd']:.3f}" in row
    assert row.endswith("| 2 × 2 seeds |")


def test_hit_table_puts_datasets_side_by_side(loaded):
    rk, _, mean = loaded
    other = _as(rk, "random-k", baseline=True)
    other.dataset = "synthetic_b"
    text = render([rk, mean, other]).split("## Hit@T")[1]
    assert "| Model | synthetic Hit@1 | synthetic Hit@2 | synthetic Hit@3 | synthetic_b Hit@1 |" in text
    mean_row = next(l for l in text.splitlines() if l.startswith("| mean *baseline*"))
    assert mean_row.endswith("| — | — | — |")


def test_figures_beside_the_markdown_are_linked(cli, results_dir, tmp_path):
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "synthetic.strict.boxplot.png").write_bytes(b"png")
    (figs / "other.strict.boxplot.png").write_bytes(b"png")
    out = tmp_path / "README.md"
    assert cli("leaderboard", "--results", str(results_dir), "--out", str(out)).exit_code == 0
    text = out.read_text()
    assert "Figures: [boxplot](figures/synthetic.strict.boxplot.png)" in text
    assert "other.strict" not in text


GOLDEN = Path(__file__).parent / "data" / "golden"


def test_golden_leaderboard():
    """Same results files, same markdown. After an intended change of the layout, regenerate with
    `stbench leaderboard --results tests/data/golden/results --out tests/data/golden/LEADERBOARD.md`."""
    assert render_dir(GOLDEN / "results") == (GOLDEN / "LEADERBOARD.md").read_text(encoding="utf-8")


def test_paired_tests_cover_every_per_gene_metric(loaded):
    from stbench.eval.stats import paired_wilcoxon

    rk, rk5, mean = loaded
    text = render([_as(rk5, "heclip"), rk, mean])
    block = text.split("Paired Wilcoxon tests against heclip")[1].split("\n\n")[1]
    assert block.splitlines()[0] == "| Model | RMSE ↓ | SSIM ↑ | Pearson ↑ |"
    row = next(l for l in block.splitlines() if l.startswith("| random-k *baseline*"))
    for metric in ("rmse", "ssim", "pearson"):
        pooled = lambda r: np.concatenate([r.per_gene(i, metric) for i in range(2)])  # noqa: E731
        t = paired_wilcoxon(pooled(rk), pooled(rk5))
        assert f"{t.median_difference:+.3f} (p {t.p_value:.1e})" in row
    assert next(l for l in block.splitlines() if l.startswith("| mean *baseline*")).startswith("| mean *baseline* | n/a |")


def test_commands_reproduce_each_rows_configuration(results_dir):
    import shlex

    from stbench.report.leaderboard import command_of, rows_of
    from stbench.runner import plan

    plugins = get_plugin_manager(env={})
    rows = rows_of([load_result(p) for p in sorted(results_dir.rglob("*.json"))])
    for row in rows:
        args = shlex.split(command_of(row))[2:]
        kv = {args[i]: args[i + 1] for i in range(0, len(args), 2) if args[i] != "-o"}
        opts = tuple(args[i + 1] for i in range(0, len(args), 2) if args[i] == "-o")
        req = RunRequest(kv["--model"], kv["--dataset"], folds=kv.get("--folds", "default"),
                         protocol=kv["--protocol"], options=opts)
        assert plan(plugins, req)["hash"] == row.runs[0].config_hash
    assert "stbench run --model random-k --dataset synthetic --protocol strict --folds syn1,syn2 -o k=5" in render_dir(results_dir)


def test_findings_put_hit_at_t_beside_the_mean_baseline(loaded):
    rk, rk5, mean = loaded
    text = render([_as(rk5, "heclip"), rk, mean])
    line = next(l for l in text.splitlines() if l.startswith("- Hit@1/2/3 of the `mean` baseline"))
    hits = "/".join(f"{mean.summary[h]['mean']:.3f}" for h in ("hit@1", "hit@2", "hit@3"))
    best = "/".join(f"{rk5.summary[h]['mean']:.3f}" for h in ("hit@1", "hit@2", "hit@3"))
    assert f"ignores the image: {hits}; best model: {best}." in line


def test_findings_show_the_spread_over_seeds(loaded):
    rk, rk5, mean = loaded
    heclip0, heclip1 = _as(rk5, "heclip", seed=0), _as(rk, "heclip", seed=1)
    heclip1.changed_options, heclip1.extra = rk5.changed_options, dict(rk5.extra)
    text = render([heclip0, heclip1, _as(rk, "bleep"), rk, mean])
    line = next(l for l in text.splitlines() if l.startswith("- Variation between training runs"))
    per_seed = f"{rk5.summary['pearson']['mean']:.3f} / {rk.summary['pearson']['mean']:.3f}"
    assert f"per seed: {heclip0.label}: {per_seed}." in line and "One seed only: `bleep`" in line
    assert "Not shown: variation" not in text
