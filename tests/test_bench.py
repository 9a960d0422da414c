"""stbench bench: grids of runs that resume by configuration hash."""
import pytest

from stbench.bench import completed, grid_requests, run_grid
from stbench.errors import OptionError, StbenchError
from stbench.plugins import get_plugin_manager
from stbench.report.results import load_result

FOLDS = "syn1,syn2"


@pytest.fixture(scope="module")
def plugins():
    return get_plugin_manager(env={})


def test_grid_is_every_combination_with_options_where_they_apply(plugins):
    reqs = grid_requests(plugins, "mean,random-k", "synthetic", ["strict", "paper"], seeds=2, options=["k=5"])
    assert len(reqs) == 2 * 2 * 2
    assert {(r.model, r.protocol, r.seed) for r in reqs} == {(m, p, s) for m in ("mean", "random-k")
                                                             for p in ("strict", "paper") for s in (0, 1)}
    assert all(r.options == (("k=5",) if r.model == "random-k" else ()) for r in reqs)
    quick = grid_requests(plugins, "heclip,mean", "synthetic", profile="quick")
    assert {r.model: r.options for r in quick} == {"heclip": ("profile=quick",), "mean": ()}


def test_grid_errors_name_the_problem(plugins):
    with pytest.raises(OptionError, match="no model in the grid has option 'kk'"):
        grid_requests(plugins, "mean,random-k", "synthetic", options=["kk=5"])
    with pytest.raises(StbenchError, match="heclp"):
        grid_requests(plugins, "heclp", "synthetic")
    with pytest.raises(StbenchError, match="at least one model"):
        grid_requests(plugins, " , ", "synthetic")


def test_resume_skips_completed_runs_and_reruns_corrupt_ones(plugins, tmp_path):
    reqs = grid_requests(plugins, "mean,random-k", "synthetic", folds=FOLDS, options=["k=5"], save_predictions=False)
    first = run_grid(plugins, reqs, tmp_path)
    assert [o.status for o in first.outcomes] == ["ran", "ran"]
    mean_path, rk_path = (o.path for o in first.outcomes)
    created = load_result(mean_path).created
    again = run_grid(plugins, reqs, tmp_path)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert load_result(mean_path).created == created
    rk_path.write_text(rk_path.read_text()[:100])
    assert completed(plugins, reqs[1], tmp_path)[1].startswith("rerun: results file")
    third = run_grid(plugins, reqs, tmp_path)
    assert [o.status for o in third.outcomes] == ["skipped", "ran"]
    assert load_result(rk_path).config_hash == rk_path.name.split(".")[-2]
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_interrupted_grid_resumes_where_it_stopped(plugins, tmp_path, monkeypatch):
    import stbench.bench as bench

    reqs = grid_requests(plugins, "mean,random-k", "synthetic", folds=FOLDS, save_predictions=False)
    real_run = bench.run

    def interrupted(plugins_, req, *a, **k):
        if req.model == "random-k":
            raise KeyboardInterrupt
        return real_run(plugins_, req, *a, **k)

    monkeypatch.setattr(bench, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_grid(plugins, reqs, tmp_path)
    monkeypatch.setattr(bench, "run", real_run)
    resumed = run_grid(plugins, reqs, tmp_path)
    assert [o.status for o in resumed.outcomes] == ["skipped", "ran"]


def test_cli_bench_renders_the_leaderboard_and_keeps_going(cli, tmp_path):
    out = tmp_path / "res"
    args = ("bench", "--models", "mean,random-k", "--datasets", "synthetic", "--folds", FOLDS,
            "--out", str(out), "--no-predictions")
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    board = (out / "LEADERBOARD.md").read_text()
    assert "| mean *baseline* |" in board and "| random-k *baseline* |" in board
    assert "2 ran, 0 skipped, 0 failed" in res.stdout
    assert "0 ran, 2 skipped, 0 failed" in cli(*args).stdout
    bad = cli("bench", "--models", "mean", "--datasets", "synthetic", "--protocol", "strict,papr", "--out", str(out))
    assert bad.exit_code == 2 and "unknown protocol 'papr'" in bad.stderr


def test_keep_going_records_a_failed_run_and_exits_1(cli, tmp_path):
    out = tmp_path / "res"
    env = {"STBENCH_DATA": str(tmp_path / "empty"), "STBENCH_CACHE": str(tmp_path / "cache")}
    args = ("bench", "--models", "mean", "--datasets", "her2st_C_HVG,synthetic", "--folds", "default",
            "--out", str(out), "--no-predictions")
    stop = cli(*args, env=env)
    assert stop.exit_code == 2 and "mean on her2st_C_HVG (strict, seed 0) failed" in stop.stderr
    assert "rerun the same command to resume" in stop.stderr
    going = cli(*args, "--keep-going", env=env)
    assert going.exit_code == 1
    assert "failed   mean on her2st_C_HVG" in going.stdout and "1 ran, 0 skipped, 1 failed" in going.stdout
