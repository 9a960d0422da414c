"""The committed leaderboard is exactly what `stbench leaderboard` renders from the committed results."""
import re

from stbench.report.leaderboard import load_all
from stbench.report.results import config_hash

from conftest import REPO

RESULTS = REPO / "leaderboard" / "results"
BOARD = REPO / "leaderboard" / "README.md"


def test_leaderboard_is_up_to_date(cli):
    result = cli("leaderboard", "--results", str(RESULTS), "--out", str(BOARD), "--check")
    assert result.exit_code == 0, result.stderr


def test_published_results_are_real_five_fold_runs():
    results = load_all(RESULTS)
    assert results, "no published results"
    for r in results:
        assert r.schema == "stbench.results/1" and r.environment["stbench"]
        if r.dataset.startswith("her2st_C"):
            assert [f["query"] for f in r.folds] == ["C2", "C3", "C4", "C5", "C6"]
            assert r.wall_seconds > 0 and config_hash(r.config) == r.config_hash


def test_published_grid_is_complete_and_figures_exist():
    results = load_all(RESULTS)
    have = {(r.dataset, r.protocol, r.model, tuple(sorted(r.extra.get("profile_changes", {}).items()))) for r in results}
    models = ("heclip", "bleep", "clip", "stnet", "histogene", "mean", "random-k", "ridge", "knn", "ensemble")
    for dataset in ("her2st_C_HVG", "her2st_C_HEG"):
        assert {(dataset, "strict", m, ()) for m in models} <= have
    assert {("her2st_C_HVG", "paper", m, ()) for m in ("heclip", "bleep", "clip", "mean", "random-k")} <= have
    assert ("her2st_C_HVG", "strict", "heclip", (("loss", "clip"),)) in have
    assert ("her2st_C_HVG", "strict", "heclip", (("augment", False),)) in have
    assert {(r.model, r.seed) for r in results if r.dataset == "her2st_C_HVG" and r.protocol == "strict"
            and not r.extra.get("profile_changes")} == {(m, s) for m in models for s in (0, 1, 2)}
    assert "5 × 3 seeds" in BOARD.read_text(encoding="utf-8")
    board = BOARD.read_text(encoding="utf-8")
    assert "The paper's claim that heclip beats bleep" in board and "Ablations of `heclip`" in board
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", board)
    assert any(l.endswith("boxplot.png") for l in links) and any(l.endswith("umap.png") for l in links)
    assert any(l.endswith("spatial.png") for l in links) and any(l.endswith("loss.png") for l in links)
    for link in links:
        assert (BOARD.parent / link).stat().st_size > 10_000
