"""benchmarks/select_options.py: nested validation on the reference slides, and ensembles of candidates."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import FIXTURE_CATALOG

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("select_options", REPO / "benchmarks" / "select_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_z_scores_each_member_so_scale_does_not_weigh():
    from stbench.eval.metrics import pearson

    rng = np.random.default_rng(0)
    true = rng.normal(size=(40, 3))
    a = true + rng.normal(size=(40, 3))
    b = true + rng.normal(size=(40, 3))
    genes = ["g1", "g2", "g3"]
    script = _script()
    same = script.ensemble_pearson([{("f", "q"): (genes, true, a)}, {("f", "q"): (genes, true, 1000 * a + 5)}])
    assert np.isclose(same[0], np.nanmean(pearson(true, a)))
    shrunk = script.ensemble_pearson([{("f", "q"): (genes, true, a)}, {("f", "q"): (genes, true, 1e-3 * b)}])
    balanced = np.nanmean(pearson(true, (a - a.mean(0)) / a.std(0) + (b - b.mean(0)) / b.std(0)))
    assert np.isclose(shrunk[0], balanced)


def test_an_ensemble_of_one_model_scores_as_the_model(her2st_mini_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STBENCH_CATALOG": str(FIXTURE_CATALOG)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "select_options.py"), "--dataset", "her2st_mini_HVG",
                           "--threads", "1", "--outer", "C4", "--candidate", "knn:k=5", "--candidate", "knn:k=5|knn:k=5",
                           "--candidate", "mean"],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"knn:k=5", "knn:k=5|knn:k=5", "mean"}
    knn, ensemble = float(rows["knn:k=5"][0]), float(rows["knn:k=5|knn:k=5"][0])
    assert -1 < knn < 1 and abs(ensemble - knn) < 1e-4
    assert rows["mean"][0] == "nan"


def test_inner_datasets_hold_the_outer_reference_slides_only():
    from stbench.plugins import get_plugin_manager

    plugins = get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)])
    inner = dict(_script().inner_datasets(plugins, "her2st_mini_HVG"))
    assert sorted(inner) == ["C2", "C3", "C4", "C5", "C6"]
    for query, name in inner.items():
        dataset = plugins.datasets.get(name)
        slides = {s for fold in dataset.folds("all") for s in (*fold.reference, *fold.query)}
        assert slides == {"C2", "C3", "C4", "C5", "C6"} - {query}
        assert len(dataset.folds("all")) == 4
