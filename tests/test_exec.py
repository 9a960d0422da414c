"""stbench bench --executor ray|slurm: the same grid, the same results files, resume, failures with logs.

One real local Ray instance (2 CPUs) serves the whole module; submitit's LocalExecutor runs the SLURM
code path (a profile with ``cluster = "local"``) as local processes."""
import os
import re
import shutil
import sys
import textwrap

import pytest

from stbench.bench import grid_requests, run_grid
from stbench.errors import StbenchError
from stbench.exec import get_executor
from stbench.exec.slurm import load_profile, parse_time, slurm_parameters
from stbench.plugins import get_plugin_manager
from stbench.report.results import load_result

FOLDS = "syn1,syn2"
GRID = ("bench", "--models", "mean,random-k", "--datasets", "synthetic", "--folds", FOLDS)
TIMING = ("fit_seconds", "predict_seconds")

BOOM_PLUGIN = '''
from dataclasses import dataclass
from stbench import Model, ModelCard, hookimpl

class Boom(Model):
    name = "boom"
    card = ModelCard(summary="fails at fit")

    @dataclass(frozen=True)
    class Options:
        pass

    def fit(self, train, genes):
        print("boom is about to fail")
        raise RuntimeError("boom: fit exploded")

    def predict(self, slide):
        raise AssertionError("never reached")

@hookimpl
def register_models(register):
    register(Boom)
'''


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    """The grid run by the default (local) executor: the reference every executor must reproduce."""
    out = tmp_path_factory.mktemp("local")
    plugins = get_plugin_manager(env={})
    report = run_grid(plugins, grid_requests(plugins, "mean,random-k", "synthetic", folds=FOLDS), out)
    assert [o.status for o in report.outcomes] == ["ran", "ran"]
    return out


@pytest.fixture
def wide(cli):
    """The CLI with a console wide enough that rich wraps no line."""
    return lambda *args: cli(*args, env={"COLUMNS": "1000"})


@pytest.fixture
def boom_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "boom_plugin.py").write_text(textwrap.dedent(BOOM_PLUGIN))
    return d


def flat(text):
    """Output with rich's line wrapping undone (and runs of spaces as one)."""
    return " ".join(text.split())


def files(folder):
    """Every file but the logs and the leaderboard, by relative path."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).parts[0] != "logs" and p.name != "LEADERBOARD.md")


def numbers(path):
    """What a results file says about the models (not when or how fast it ran)."""
    r = load_result(path)
    folds = [{k: v for k, v in f.items() if k not in TIMING} for f in r.folds]
    return r.config_hash, r.config, r.options, r.summary, folds


def assert_same_results(ours, reference):
    assert files(ours) == files(reference)
    jsons = [f for f in files(reference) if f.endswith(".json")]
    assert len(jsons) == 2
    for name in jsons:
        assert numbers(ours / name) == numbers(reference / name), name


def test_ray_runs_the_grid_into_the_same_results_and_resumes(ray_instance, local_results, tmp_path, wide):
    out = tmp_path / "ray"
    res = wide(*GRID, "--out", str(out), "--executor", "ray")
    assert res.exit_code == 0, res.stderr
    assert "grid: 2 run(s)" in res.stdout and "(ray on a local instance" in flat(res.stdout)
    assert "2 ran, 0 skipped, 0 failed" in flat(res.stdout)
    assert_same_results(out, local_results)
    logs = sorted((out / "logs").rglob("*.log"))
    assert [p.relative_to(out / "logs").parts[0] for p in logs] == ["mean", "random-k"]
    assert all("# done:" in p.read_text() for p in logs)
    again = wide(*GRID, "--out", str(out), "--executor", "ray")
    assert "0 ran, 2 skipped, 0 failed" in flat(again.stdout)


def test_submitit_local_runs_the_slurm_code_path_into_the_same_results(local_results, tmp_path, wide):
    profile = tmp_path / "local.toml"
    profile.write_text('cluster = "local"\ntime = "0:10:00"\ncpus_per_run = 1\npoll_seconds = 0.2\n')
    out = tmp_path / "slurm"
    res = wide(*GRID, "--out", str(out), "--executor", "slurm", "--slurm-profile", str(profile))
    assert res.exit_code == 0, res.stderr + res.stdout
    assert "(slurm (submitit's local executor) on the default partition; each run 10 min" in flat(res.stdout)
    assert "2 ran, 0 skipped, 0 failed" in flat(res.stdout)
    assert_same_results(out, local_results)
    assert list((out / "logs" / "slurm").glob("*_log.out")), "submitit keeps the jobs' own output there"
    again = wide(*GRID, "--out", str(out), "--executor", "slurm", "--slurm-profile", str(profile))
    assert "0 ran, 2 skipped" in flat(again.stdout)


def test_a_failed_ray_run_is_reported_with_its_log_and_keep_going_runs_the_rest(ray_instance, boom_dir, tmp_path):
    plugins = get_plugin_manager([boom_dir], env={})
    reqs = grid_requests(plugins, "boom,mean", "synthetic", folds=FOLDS, save_predictions=False)
    report = run_grid(plugins, reqs, tmp_path, keep_going=True, executor=get_executor("ray"))
    boom, mean = report.outcomes
    assert (boom.status, mean.status) == ("failed", "ran")
    assert boom.reason == "RuntimeError: boom: fit exploded" and boom.path is None
    text = boom.log.read_text()
    assert "boom is about to fail" in text and "Traceback" in text and "RuntimeError: boom: fit exploded" in text
    assert boom.log.parent == tmp_path.resolve() / "logs" / "boom"
    assert load_result(mean.path).model == "mean"


def test_without_keep_going_a_failed_run_stops_the_grid_in_one_line(ray_instance, boom_dir, tmp_path, wide):
    out = tmp_path / "res"
    args = ("--plugins-dir", str(boom_dir), "bench", "--models", "boom,mean", "--datasets", "synthetic",
            "--folds", FOLDS, "--out", str(out), "--no-predictions", "--executor", "ray")
    stop = wide(*args)
    assert stop.exit_code == 2
    line = flat(stop.stderr)
    assert re.match(r"stbench: error: boom on synthetic \(strict, seed 0\) failed: RuntimeError: boom: fit exploded "
                    r"\(log: .*boom/synthetic\.strict\.\w+\.log; (1 other run cancelled, 0 finished meanwhile|"
                    r"0 other runs cancelled, 1 finished meanwhile|no other run was still queued or running); "
                    r"completed runs are kept; rerun the same command to resume\)$", line), line
    going = wide(*args, "--keep-going")
    assert going.exit_code == 1
    assert re.search(r"failed boom on synthetic \(strict, seed 0\): RuntimeError: boom: fit exploded \(log: \S*\.log\)",
                     flat(going.stdout)), going.stdout
    assert "1 ran, 0 skipped, 1 failed" in flat(going.stdout) or "0 ran, 1 skipped, 1 failed" in flat(going.stdout)


@pytest.mark.parametrize("executor, module", [("ray", "ray"), ("slurm", "submitit")])
def test_a_missing_extra_is_a_one_line_error_naming_it(cli, tmp_path, monkeypatch, executor, module):
    monkeypatch.setitem(sys.modules, module, None)
    res = cli(*GRID, "--out", str(tmp_path), "--executor", executor, "--slurm-time", "10") if executor == "slurm" \
        else cli(*GRID, "--out", str(tmp_path), "--executor", executor)
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"stbench: error: --executor {executor} needs the package '{module}', which is not "
                                  f"installed; pip install \"stbench[cluster]\"")


def test_an_unreachable_ray_address_is_a_one_line_error(cli, tmp_path):
    res = cli(*GRID, "--out", str(tmp_path), "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("stbench: error: cannot reach the Ray cluster at 127.0.0.1:1")
    bad = cli(*GRID, "--out", str(tmp_path), "--executor", "ray", "--ray-address", "nowhere")
    assert bad.exit_code == 2 and "is not host:port" in bad.stderr


def test_options_that_do_not_apply_are_errors(cli, tmp_path):
    cases = [(("--ray-address", "h:1"), "--ray-address needs --executor ray"),
             (("--slurm-time", "10"), "--slurm-time needs --executor slurm"),
             (("--gpus-per-run", "1"), "--gpus-per-run applies to --executor ray or slurm"),
             (("--executor", "slurm"), "needs a time limit: --slurm-time"),
             (("--executor", "ray", "--device", "cuda"), "--device cuda with --executor ray needs --gpus-per-run 1"),
             (("--executor", "ray", "--cpus-per-run", "0"), "--cpus-per-run must be at least 1")]
    for extra, message in cases:
        res = cli(*GRID, "--out", str(tmp_path), *extra)
        assert res.exit_code == 2 and message in res.stderr, (extra, res.stderr)


def test_slurm_settings_from_a_profile_and_the_command_line(tmp_path):
    assert [parse_time(t) for t in (90, "90", "1:30", "4:00:00", "1-2", "1-02:30:00", "0:00:30")] == \
        [90, 90, 2, 240, 26 * 60, 26 * 60 + 30, 1]  # as sbatch reads them: 1:30 is M:SS
    with pytest.raises(StbenchError, match="not minutes"):
        parse_time("4h")
    profile = tmp_path / "gpu.toml"
    profile.write_text(textwrap.dedent('''
        partition = "gpu"
        time = "04:00:00"
        gpus_per_run = 1
        cpus_per_run = 8
        mem_gb = 64
        account = "lab"
        setup = "module load cuda"
        [submitit]
        slurm_additional_parameters = { reservation = "bench" }
    '''))
    params, own = slurm_parameters(load_profile(profile), {"partition": "a100", "time": None, "mem_gb": 32})
    assert params == {"timeout_min": 240, "name": "stbench", "slurm_partition": "a100", "gpus_per_node": 1,
                      "cpus_per_task": 8, "mem_gb": 32.0, "slurm_account": "lab", "slurm_setup": ["module load cuda"],
                      "slurm_additional_parameters": {"reservation": "bench"}}
    assert own == {"cluster": "slurm", "poll_seconds": 15.0, "cpus": 8}
    ex = get_executor("slurm", slurm_profile=profile)
    assert "partition gpu; each run 240 min, 8 CPU(s), 1 GPU(s), 64 GB" in ex.describe()
    profile.write_text('partitoin = "gpu"\n')
    with pytest.raises(StbenchError, match="unknown key 'partitoin'"):
        load_profile(profile)


FAKE_SLURM = {"srun": "exit 0", "scancel": "exit 0",
              "sbatch": 'for last; do :; done; cp "$last" "$FAKE_SLURM_SEEN"; echo "Submitted batch job 4242"',
              "sacct": 'printf "JobID|State|NodeList\\n4242_0|FAILED|n1\\n4242_1|FAILED|n1\\n"'}


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a real SLURM is installed here")
def test_the_sbatch_path_with_stand_in_slurm_commands(wide, tmp_path, monkeypatch):
    """No SLURM here: stand-ins for sbatch/sacct/scancel/srun check the job array's sbatch header and that
    jobs SLURM reports as FAILED come back as failed runs with submitit's log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_SEEN", str(tmp_path / "submitted.sh"))
    import submitit.core.core

    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 0)  # no slow NFS to wait for here
    profile = tmp_path / "gpu.toml"
    profile.write_text('partition = "gpu"\ntime = "1:00:00"\ncpus_per_run = 2\nmem_gb = 8\naccount = "lab"\n'
                       'array_parallelism = 1\nsetup = ["echo ready"]\npoll_seconds = 0.1\n')
    out = tmp_path / "res"
    res = wide(*GRID, "--out", str(out), "--executor", "slurm", "--slurm-profile", str(profile),
               "--slurm-partition", "a100", "--keep-going")
    assert res.exit_code == 1, res.stderr
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--partition=a100", "--time=60", "--cpus-per-task=2", "--mem=8GB", "--account=lab",
                 "--array=0-1%1", "--job-name=stbench"):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "echo ready" in script
    assert flat(res.stdout).count("failed mean on synthetic") + flat(res.stdout).count("failed random-k on") == 2
    assert "mean on synthetic (strict, seed 0): SLURM job 4242_0 ended FAILED without a result (log: " in flat(res.stdout)
    assert "4242_0_0_log.err)" in flat(res.stdout)
    assert "0 ran, 0 skipped, 2 failed" in flat(res.stdout)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a real SLURM is installed here")
def test_slurm_without_slurm_is_a_one_line_error(cli, tmp_path):
    res = cli(*GRID, "--out", str(tmp_path), "--executor", "slurm", "--slurm-time", "10")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert 'Could not detect "srun"' in res.stderr and 'cluster = "local"' in res.stderr


def test_a_worker_rebuilds_the_drivers_plugins_catalogues_and_folders(boom_dir, tmp_path, monkeypatch):
    from conftest import FIXTURE_CATALOG
    from stbench.exec.worker import WorkerSetup

    monkeypatch.chdir(tmp_path)
    env = {"STBENCH_DATA": "rel/data", "STBENCH_CATALOG": str(FIXTURE_CATALOG), "STBENCH_LOAD_PLUGINS": "boom_plugin",
           "HOME": "/elsewhere"}
    driver = get_plugin_manager([boom_dir], env=env)
    setup = WorkerSetup.from_plugins(driver, threads=4, environ=env)
    assert setup.plugins_dirs == (str(boom_dir.resolve()),) and setup.catalogs == (str(FIXTURE_CATALOG.resolve()),)
    assert dict(setup.env) == {"STBENCH_DATA": str(tmp_path.resolve() / "rel" / "data"), "STBENCH_CATALOG": "",
                               "STBENCH_LOAD_PLUGINS": "boom_plugin"}
    worker = get_plugin_manager(setup.plugins_dirs, setup.catalogs, env=dict(setup.env))
    assert worker.models.names() == driver.models.names() == ["boom"]
    assert worker.datasets.names() == driver.datasets.names() and "her2st_mini_HVG" in worker.datasets.names()
