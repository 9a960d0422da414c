"""The committed leaderboard is exactly what `stbench leaderboard` renders from the committed results."""
from stbench.leaderboard import load_all
from stbench.results import config_hash

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
