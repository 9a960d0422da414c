"""The ``ensemble`` model: members trained on the same fold, predictions z-scored per gene and averaged."""
from __future__ import annotations

import numpy as np
import pytest

from stbench.errors import OptionError, UnknownNameError
from stbench.eval.metrics import pearson
from stbench.options import build_options
from stbench.testing import check_learns, check_model, tiny_fold
from stbench_ensemble.model import EnsembleModel, combine, parse_members

STNET = "stnet:encoder=test_efficientnet,pretrained=false,epochs=2,batch_size=16,optimizer=adam,lr=1e-3"
KNN = "knn:input_px=64,k=10"
RIDGE = "ridge:input_px=64"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "ensemble-cache"))


def test_parse_members():
    assert parse_members("stnet:profile=quick; knn:k=200,smooth=5;ridge") == [
        ("stnet", ("profile=quick",)), ("knn", ("k=200", "smooth=5")), ("ridge", ())]
    with pytest.raises(OptionError, match="'members' is empty"):
        parse_members(" ; ")


def test_combine_weighs_members_equally_whatever_their_scale():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 4))
    a, b = true + rng.normal(size=(50, 4)), true + rng.normal(size=(50, 4))
    assert np.allclose(combine([a]), a, atol=1e-5)
    same = combine([a, 1000 * a + 5])
    assert np.allclose(pearson(true, same), pearson(true, a), atol=1e-5)
    mixed = combine([a, 1e-3 * b])
    z = (a - a.mean(0)) / a.std(0) + (b - b.mean(0)) / b.std(0)
    assert np.allclose(pearson(true, mixed), pearson(true, z), atol=1e-5)
    assert np.allclose(mixed.mean(0), (a.mean(0) + 1e-3 * b.mean(0)) / 2, atol=1e-5)
    assert np.allclose(mixed.std(0), (a.std(0) + 1e-3 * b.std(0)) / 2 * z.std(0) / 2, rtol=1e-4)
    constant = combine([a, np.ones_like(a)])
    assert np.allclose(pearson(true, constant), pearson(true, a), atol=1e-5)


def test_ensemble_follows_the_model_contract_and_learns():
    check_model(EnsembleModel, [f"members={STNET};{KNN}"])  # includes save/load of both members
    r_model, r_random = check_learns(EnsembleModel, [f"members={RIDGE};{KNN}"])
    assert r_model > r_random + 0.15


def test_an_ensemble_of_one_model_predicts_what_the_model_predicts(tmp_path):
    from stbench_frozen.models import KNNModel

    fold = tiny_fold()
    alone = KNNModel(build_options(KNNModel, ["input_px=64", "k=10"])[0], seed=3, workdir=tmp_path / "a")
    alone.fit(fold.train, fold.genes)
    one = EnsembleModel(build_options(EnsembleModel, [f"members={KNN}"])[0], seed=3, workdir=tmp_path / "b")
    one.fit(fold.train, fold.genes)
    assert np.allclose(one.predict(fold.queries[0]), alone.predict(fold.queries[0]), atol=1e-5)
    assert one.members[0].workdir == tmp_path / "b" / "member0-knn"


def test_member_errors_are_one_line():
    with pytest.raises(UnknownNameError, match="nosuchmodel"):
        EnsembleModel(build_options(EnsembleModel, ["members=nosuchmodel;knn"])[0])
    with pytest.raises(OptionError, match="has no option 'kk'"):
        EnsembleModel(build_options(EnsembleModel, ["members=knn:kk=3"])[0])
    with pytest.raises(OptionError, match="cannot hold an ensemble"):
        EnsembleModel(build_options(EnsembleModel, ["members=knn;ensemble"])[0])


def test_a_checkpoint_loads_only_into_the_same_members(tmp_path):
    from stbench.errors import StbenchError

    fold = tiny_fold()
    model = EnsembleModel(build_options(EnsembleModel, [f"members={RIDGE};{KNN}"])[0], workdir=tmp_path / "w")
    model.fit(fold.train, fold.genes)
    model.save(tmp_path / "model.safetensors")
    assert sorted(p.name for p in tmp_path.glob("model*")) == [
        "model.member0.safetensors", "model.member1.safetensors", "model.safetensors"]
    other = EnsembleModel(build_options(EnsembleModel, [f"members={KNN};{RIDGE}"])[0])
    with pytest.raises(StbenchError, match="holds members"):
        other.load(tmp_path / "model.safetensors")


def test_cli_run_records_the_members_and_bad_members_exit_2(cli, tmp_path):
    import json

    out = tmp_path / "results"
    res = cli("run", "--model", "ensemble", "--dataset", "synthetic", "--folds", "all", "-o", f"members={RIDGE};{KNN}",
              "--out", str(out), "--no-predictions")
    assert res.exit_code == 0, res.output
    (path,) = out.rglob("*.json")
    result = json.loads(path.read_text())
    assert result["options"]["members"] == f"{RIDGE};{KNN}"
    assert [m["model"] for m in result["folds"][0]["members"]] == ["ridge", "knn"]
    bad = cli("run", "--model", "ensemble", "--dataset", "synthetic", "-o", "members=knn:k=0", "--out", str(out))
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "knn" in bad.stderr


def test_stbench_train_bundles_every_member_and_the_bundle_predicts_as_the_model(cli, tmp_path):
    import json

    from stbench.bundle import BundleError, load_bundle
    from stbench.plugins import get_plugin_manager

    out = tmp_path / "bundle"
    res = cli("train", "--model", "ensemble", "--dataset", "synthetic", "--slides", "syn1,syn2",
              "-o", f"members={RIDGE};{KNN}", "--out", str(out))
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.member0.safetensors", "model.member1.safetensors", "model.safetensors"]
    plugins = get_plugin_manager()
    bundle = load_bundle(out, plugins)
    assert [m.name for m in bundle.model.members] == ["ridge", "knn"]
    query = plugins.datasets.get("synthetic").slide("syn3")[0]
    knn_alone = load_bundle(out, plugins).model.members[1].predict(query)
    pred = bundle.model.predict(query)
    assert pred.shape == knn_alone.shape and np.all(np.isfinite(pred))
    assert not np.allclose(pred, knn_alone)
    (out / "model.member1.safetensors").write_bytes(b"damaged")
    with pytest.raises(BundleError, match="model.member1.safetensors"):
        load_bundle(out, plugins)
