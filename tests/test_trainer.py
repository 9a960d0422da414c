import json

import numpy as np
import torch

import pytest

from stbench.data.loader import PatchDataset, make_loader
from stbench.nn.trainer import (SeededOrder, evaluate, fit, load_checkpoint, reference_split, save_checkpoint,
                                split_spots)
from stbench.testing import tiny_fold


def test_spot_split_is_seeded_disjoint_and_80_20():
    train, val = split_spots(100, 0.2, seed=3)
    assert len(train) == 80 and len(val) == 20 and not set(train) & set(val)
    again = split_spots(100, 0.2, seed=3)
    assert np.array_equal(again[0], train) and not np.array_equal(split_spots(100, 0.2, seed=4)[1], val)


def test_slice_split_holds_out_the_last_reference_slide():
    fold = tiny_fold(n_slides=4)
    train, val = reference_split(fold.train, "slice", 0.2, seed=0)
    n = [len(s) for s in fold.train]
    assert np.array_equal(val, np.arange(sum(n[:-1]), sum(n))) and len(train) == sum(n[:-1])


def test_fit_keeps_the_best_validation_epoch_and_writes_history(tmp_path):
    fold = tiny_fold()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, len(fold.genes)))

    def loss_of(images, targets):
        return ((net(images.float() / 255) - targets) ** 2).mean()

    train_rows, val_rows = reference_split(fold.train, "spots", 0.2, 0)
    val = PatchDataset(fold.train, augment=False, rows=val_rows)
    history = fit(net, loss_of, torch.optim.SGD(net.parameters(), lr=0.05), PatchDataset(fold.train, rows=train_rows),
                  val, epochs=4, batch_size=16, device="cpu", seed=0, workdir=tmp_path)
    vals = [e["val_loss"] for e in history.epochs]
    assert history.best_epoch == int(np.argmin(vals)) + 1
    # the weights left in the module are the best epoch's, not the last epoch's
    restored = evaluate(net, loss_of, make_loader(val, 16, shuffle=False), "cpu")
    assert history.best_epoch < len(vals) and restored == pytest.approx(min(vals), rel=1e-6)
    assert restored < vals[-1] / 10
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best_epoch"] == history.best_epoch and len(saved["epochs"]) == 4


def test_checkpoint_round_trip_is_safetensors(tmp_path):
    net = torch.nn.Linear(3, 2)
    save_checkpoint(net, tmp_path / "m.safetensors", {"a": 1}, {"ref": torch.arange(4.0)})
    state, extra, config = load_checkpoint(tmp_path / "m.safetensors")
    assert config == {"a": 1} and torch.equal(extra["ref"], torch.arange(4.0))
    assert torch.equal(state["weight"], net.weight) and json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    raw = (tmp_path / "m.safetensors").read_bytes()
    assert raw[8:9] == b"{" and int.from_bytes(raw[:8], "little") < len(raw)  # safetensors header, not a pickle


def test_fit_takes_a_seeded_order_of_whole_steps_and_keeps_the_last_epoch(tmp_path):
    # one whole sample per step (as a slide-level model trains), no validation, last epoch kept
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    steps = [((torch.randn(n, 2), torch.ones(n, 1)), torch.randn(n, 1)) for n in (1, 3, 5)]
    seen = []

    def loss_of(inputs, targets):
        x, scale = inputs  # a tuple of inputs travels as it is
        seen.append(len(targets))
        return ((net(x) * scale - targets) ** 2).mean()

    order = SeededOrder(steps, seed=4)
    history = fit(net, loss_of, torch.optim.SGD(net.parameters(), lr=0.1), order, None, epochs=3, device="cpu",
                  seed=4, workdir=tmp_path, select_best=False, min_batch=1)
    assert seen == [len(steps[i][1]) for epoch in range(3) for i in order.order(epoch)]
    assert history.best_epoch == 3 and len(history.epochs) == 3 and "val_loss" not in history.epochs[0]
    assert json.loads((tmp_path / "history.json").read_text()) == history.to_dict()
    assert np.array_equal(SeededOrder(steps, 4).order(2), order.order(2))
    assert any(not np.array_equal(order.order(0), order.order(e)) for e in range(1, 6))
    with pytest.raises(TypeError, match="batch_size"):
        fit(net, loss_of, torch.optim.SGD(net.parameters(), lr=0.1), PatchDataset(tiny_fold().train), None,
            epochs=1, device="cpu", seed=0)
