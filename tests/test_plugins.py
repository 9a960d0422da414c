import textwrap

import pytest

from stbench.errors import PluginError
from stbench.plugins import get_plugin_manager

from conftest import REPO, run_stbench

GOOD_PLUGIN = '''
from dataclasses import dataclass
import numpy as np
import click
from stbench import Model, ModelCard, hookimpl

class Zero(Model):
    name = "{name}"
    card = ModelCard(summary="predicts zeros")

    @dataclass(frozen=True)
    class Options:
        pass

    def fit(self, train, genes):
        self.g = len(genes)

    def predict(self, slide):
        return np.zeros((len(slide), self.g))

@hookimpl
def register_models(register):
    register(Zero)

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")
'''


def plugin_dir(tmp_path, files: dict):
    d = tmp_path / "plugins"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(textwrap.dedent(text))
    return d


BUILTIN_PLUGINS = {"stbench_baselines", "stbench_heclip", "stbench_bleep", "stbench_clip", "stbench_stnet",
                   "stbench_histogene"}


def test_builtins_register_through_hooks():
    p = get_plugin_manager(env={})
    assert p.loaded[0].name == "stbench.builtin"
    assert BUILTIN_PLUGINS <= {i.name for i in p.loaded}
    assert {"mean", "random-k", "heclip"} <= set(p.models.names())
    assert p.models.origin("heclip") == "stbench_heclip"
    assert p.models.origin("mean") == "stbench_baselines"
    assert {"rmse", "ssim", "pearson", "hit@1", "hit@2", "hit@3"} <= set(p.metrics.names())
    assert "synthetic" in p.readers and "synthetic" in p.datasets


def test_builtin_model_plugins_are_entry_points_like_a_third_partys(cli):
    import json

    listed = json.loads(cli("plugins", "--json").output)["loaded"]
    sources = {r["name"]: r["source"] for r in listed}
    for name in BUILTIN_PLUGINS:
        assert sources[name] == f"entry point {name} of stbench", sources
    assert sources["stbench.builtin"] == "core"
    from stbench import plugins as plugins_module

    assert not hasattr(plugins_module, "DEFAULT_PLUGINS")


def test_load_plugins_restricts():
    assert get_plugin_manager(env={"STBENCH_LOAD_PLUGINS": ""}).models.names() == []
    p = get_plugin_manager(env={"STBENCH_LOAD_PLUGINS": "stbench_baselines"})
    assert p.models.names() == ["mean", "random-k"] and "rmse" in p.metrics


def test_trace_plugins_writes_hook_calls(capsys):
    get_plugin_manager(env={"STBENCH_TRACE_PLUGINS": "1"}).models
    assert "register_models" in capsys.readouterr().err


def test_plugins_dir_model_runs_and_adds_a_command(cli, tmp_path):
    d = plugin_dir(tmp_path, {"zero.py": GOOD_PLUGIN.format(name="zero")})
    listed = cli("--plugins-dir", str(d), "list", "models")
    assert listed.exit_code == 0 and "zero" in listed.output and "mean" in listed.output
    hello = cli("--plugins-dir", str(d), "hello")
    assert hello.exit_code == 0 and hello.output == "hello from a plugin\n"
    ran = cli("--plugins-dir", str(d), "run", "--model", "zero", "--dataset", "synthetic", "--folds", "syn1",
              "--out", str(tmp_path / "out"))
    assert ran.exit_code == 0, ran.output
    assert list((tmp_path / "out" / "zero").glob("synthetic.strict.*.json"))


def test_broken_plugin_is_reported_and_others_work(cli, tmp_path):
    d = plugin_dir(tmp_path, {"broken.py": "import nonexistent_module_xyz\n",
                              "misspelt.py": "from stbench import hookimpl\n@hookimpl\ndef register_modles(register):\n    pass\n",
                              "zero.py": GOOD_PLUGIN.format(name="zero")})
    shown = cli("--plugins-dir", str(d), "plugins")
    assert shown.exit_code == 0
    assert "broken" in shown.output and "FAILED" in shown.output and "nonexistent_module_xyz" in shown.output
    assert "misspelt" in shown.output and "register_modles" in shown.output
    listed = cli("--plugins-dir", str(d), "list", "models")
    assert listed.exit_code == 0 and "zero" in listed.output


def test_duplicate_model_names_both_plugins(cli, tmp_path):
    d = plugin_dir(tmp_path, {"dup.py": GOOD_PLUGIN.format(name="mean")})
    result = cli("--plugins-dir", str(d), "list", "models")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("stbench: error: model 'mean' is registered by both plugin 'stbench_baselines' "
                                     "and plugin 'dup'; uninstall one or restrict loading with STBENCH_LOAD_PLUGINS")


def test_plugins_dir_must_exist(tmp_path):
    with pytest.raises(PluginError, match="is not a directory"):
        get_plugin_manager([tmp_path / "nope"], env={})


def fake_installed_distribution(tmp_path):
    """An installed distribution without pip: a .dist-info folder with an entry point of group stbench."""
    site = tmp_path / "site"
    info = site / "stbench_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stbench-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[stbench]\nexample = stbench_example\n")
    return site


def test_entry_point_plugin_is_listed_and_runs(tmp_path):
    site = fake_installed_distribution(tmp_path)
    env = {"PYTHONPATH": f"{site}:{REPO / 'examples' / 'stbench-example-plugin'}"}
    listed = run_stbench("list", "models", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "colour-ridge" in listed.stdout and "example" in listed.stdout
    plugins = run_stbench("plugins", "--json", env=env)
    assert '"name": "example"' in plugins.stdout and '"version": "0.1.0"' in plugins.stdout
    ran = run_stbench("run", "--model", "colour-ridge", "--dataset", "synthetic", "--out", str(tmp_path / "out"), env=env)
    assert ran.returncode == 0, ran.stderr
    assert list((tmp_path / "out" / "colour-ridge").glob("synthetic.strict.*.json"))


DATA_AND_METRIC_PLUGIN = '''
import numpy as np
from stbench import Metric, hookimpl
from stbench.data.synthetic import SyntheticDataset

@hookimpl
def register_datasets(register):
    register(SyntheticDataset("mini", ("m1", "m2"), ("m2",), "single", grid_width=5, grid_height=4,
                              n_genes=6, n_signal=3, patch_px=8))

@hookimpl
def register_metrics(register):
    register(Metric("mae", higher_is_better=False, per_gene=True,
                    fn=lambda t, p: np.abs(t - p).mean(0)))
'''


def test_third_party_dataset_and_metric_reach_the_results(cli, tmp_path):
    d = plugin_dir(tmp_path, {"extras.py": DATA_AND_METRIC_PLUGIN})
    assert "mini" in cli("--plugins-dir", str(d), "list", "datasets").output
    ran = cli("--plugins-dir", str(d), "run", "-m", "mean", "-d", "mini", "--out", str(tmp_path / "o"))
    assert ran.exit_code == 0, ran.output
    (path,) = (tmp_path / "o" / "mean").glob("mini.strict.*.json")
    from stbench.report.results import load_result
    r = load_result(path)
    assert r.metrics["mae"] == {"higher_is_better": False, "per_gene": True, "label": "mae", "ranks": False,
                                "top_genes": False, "spatial": False}
    assert len(r.per_gene(0, "mae")) == 6 and r.summary["mae"]["mean"] > 0
    board = cli("leaderboard", "--results", str(tmp_path / "o"))
    assert board.exit_code == 0 and "mae ↓ median" in (tmp_path / "o" / "LEADERBOARD.md").read_text()


def test_hook_registering_the_wrong_type_names_the_plugin(cli, tmp_path):
    d = plugin_dir(tmp_path, {"wrong.py": "from stbench import hookimpl\n@hookimpl\ndef register_readers(register):\n    register('not a reader')\n"})
    result = cli("--plugins-dir", str(d), "list", "readers")
    assert result.exit_code == 2 and "plugin 'wrong': register_readers got 'not a reader'" in result.stderr
