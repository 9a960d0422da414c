import dataclasses

import numpy as np
import pytest
import torch

from stbench.eval.metrics import pearson
from stbench.nn.trainer import load_checkpoint, reference_split
from stbench.options import build_options
from stbench.data.synthetic import SyntheticDataset
from stbench.testing import check_model, fit_tiny, tiny_fold
from stbench_baselines.models import RandomKModel
from stbench_stnet.model import STNet, dihedral_views

SMALL = ["encoder=test_efficientnet", "pretrained=false"]
TINY = SMALL + ["epochs=2", "batch_size=16", "optimizer=adam", "lr=1e-3"]


def fitted(options, fold=None):
    return fit_tiny(STNet, options, fold)


def test_check_model_stnet():
    check_model(STNet, TINY)


def test_check_model_htg_profile():
    opts, _ = build_options(STNet, ["profile=htg"])
    assert (opts.encoder, opts.pixel_norm, opts.augment, opts.tta, opts.optimizer, opts.select) == (
        "resnet101.tv_in1k", "none", "histogene", False, "adam", "last")
    check_model(STNet, ["profile=htg", *SMALL, "epochs=1", "batch_size=16", "lr=1e-3"])


def test_paper_defaults():
    o = STNet.Options()
    assert (o.encoder, o.input_crop, o.optimizer, o.lr, o.momentum, o.batch_size, o.epochs, o.tta) == (
        "densenet121.tv_in1k", 224, "sgd", 1e-6, 0.9, 32, 50, True)
    assert (o.pixel_norm, o.augment, o.head_init, o.select, o.loss_reduction) == (
        "dataset", "dihedral", "mean", "best_val", "sum")


def test_untrained_model_predicts_the_training_mean():
    # lr=0: the head stays at zero weights and bias = mean over the training rows of the 80/20 split
    model, fold = fitted(SMALL + ["epochs=1", "lr=0", "batch_size=16"])
    assert torch.count_nonzero(model.net.head.weight) == 0
    expression = np.concatenate([s.expression for s in fold.train])
    train_rows, _ = reference_split(fold.train, "spots", 0.2, 0)
    mean = expression[train_rows].mean(0)
    np.testing.assert_allclose(model.net.head.bias.detach().numpy(), mean, rtol=1e-6)
    pred = model.predict(fold.queries[0])
    np.testing.assert_allclose(pred, np.broadcast_to(mean, pred.shape), rtol=1e-5, atol=1e-6)
    # the default (PyTorch) initialisation of the htg preset does not start at the mean
    other, _ = fitted(SMALL + ["epochs=1", "lr=0", "batch_size=16", "head_init=default"], fold)
    assert other.predict(fold.queries[0]).std(0).max() > 1e-3


def _numpy_dihedral(img):
    """The 8 symmetries of the square, enumerated independently: quarter turns of x and of its mirror."""
    return [np.rot90(m, k, axes=(-2, -1)) for m in (img, img[..., ::-1]) for k in range(4)]


def test_tta_averages_exactly_the_eight_dihedral_transforms():
    x = torch.rand(2, 3, 16, 16)  # the tiny fold's patch size
    views = dihedral_views(x)
    expected = _numpy_dihedral(x.numpy())
    assert len(views) == 8
    # the same 8 images as the group (each exactly once)
    for e in expected:
        assert sum(np.array_equal(v.numpy(), e) for v in views) == 1

    torch.manual_seed(0)
    probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))  # orientation-dependent
    model, fold = fitted(TINY)
    model.net = probe
    direct = np.mean([probe(torch.from_numpy(e.copy())).detach().numpy() for e in expected], axis=0)
    np.testing.assert_allclose(model.forward_tta(x).detach().numpy(), direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probe(x).detach().numpy(), direct, atol=1e-3)  # the probe does see orientation

    # predict() goes through the same average, on the model input of each query patch
    query = fold.queries[0]
    images = torch.from_numpy(np.asarray(query.images)).permute(0, 3, 1, 2)
    inputs = model._inputs(images)
    direct = np.mean([probe(torch.from_numpy(e.copy())).detach().numpy() for e in _numpy_dihedral(inputs.numpy())], axis=0)
    np.testing.assert_allclose(model.predict(query)[:, :5], direct, rtol=1e-5, atol=1e-6)


def test_pixel_statistics_come_from_training_patches_and_travel_with_the_checkpoint(tmp_path):
    model, fold = fitted(TINY + ["norm_sample=100000"])
    train_rows, _ = reference_split(fold.train, "spots", 0.2, 0)
    patches = np.concatenate([np.asarray(s.images) for s in fold.train])[train_rows] / 255.0
    np.testing.assert_allclose(model.net.pixel_mean.numpy(), patches.mean((0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(model.net.pixel_std.numpy(), patches.std((0, 1, 2)), rtol=1e-3)
    model.save(tmp_path / "m.safetensors")
    state, _, config = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(state["pixel_mean"], model.net.pixel_mean) and config["genes"] == list(fold.genes)


def test_summed_loss_keeps_the_upstream_gradient_and_reports_the_per_spot_mean():
    model, fold = fitted(TINY)
    images = torch.from_numpy(np.asarray(fold.train[0].images[:6])).permute(0, 3, 1, 2)
    targets = torch.tensor(fold.train[0].expression[:6])
    grads, values = {}, {}
    for reduction in ("sum", "mean"):
        model.opts = dataclasses.replace(model.opts, loss_reduction=reduction)
        model.net.eval()  # fixed BatchNorm statistics, so both passes see the same function
        model.net.zero_grad()
        loss = model._loss_fn(model.net)(images, targets)
        loss.backward()
        values[reduction], grads[reduction] = float(loss.detach()), model.net.head.weight.grad.clone()
    assert values["sum"] == pytest.approx(values["mean"], rel=1e-6)
    torch.testing.assert_close(grads["sum"], 6 * grads["mean"], rtol=1e-4, atol=1e-7)


def test_short_fit_beats_random_k_on_synthetic():
    ds = SyntheticDataset("t", ("a", "b", "c", "d"), ("d",), "single", grid_width=10, grid_height=8,
                          n_genes=16, n_signal=8, patch_px=32, seed=0)
    fold = ds.prepare(ds.folds("single")[0])
    query, truth = fold.queries[0], fold.truth["d"]
    model, _ = fitted(SMALL + ["epochs=4", "optimizer=adam", "lr=1e-3", "batch_size=16"], fold)
    random_k = RandomKModel(RandomKModel.Options(k=20))
    random_k.fit(fold.train, fold.genes)
    r_model = np.nanmean(pearson(truth, model.predict(query)))
    r_random = np.nanmean(pearson(truth, random_k.predict(query)))
    assert r_model > r_random + 0.3, (r_model, r_random)
    assert model.history.best_epoch is not None and "val_loss" in model.history.epochs[0]
