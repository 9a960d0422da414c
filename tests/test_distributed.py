"""Data-parallel training on this CPU machine (2 processes, gloo): the result equals one process on the same
global batch; whole steps are shared out like accumulation; a stopped run resumes to the same weights;
precision is an option; the CLI's one-line errors."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from stbench.data.loader import PatchDataset, shard_bounds
from stbench.nn import trainer
from stbench.nn.distributed import check_world, checkpointing, free_port, launched, resolve_precision
from stbench.testing import tiny_fold

KINDS = ("mse", "bleep", "slides")


def _net() -> torch.nn.Module:
    """Batch norm and dropout: both must see the global batch for two processes to train like one."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                               torch.nn.Linear(4, 12))


def _train(kind: str, accumulate: int = 1, epochs: int = 2, **kw) -> tuple[dict, dict]:
    from stbench.nn.sharded import gather_batch
    from stbench_contrastive.losses import bleep_loss

    fold = tiny_fold()
    if kind == "slides":  # whole steps of different sizes (one slide each), no validation, last epoch
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        g = torch.Generator().manual_seed(1)
        steps = [(torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)) for n in (3, 5, 2, 7, 4)]
        history = trainer.fit(net, lambda x, y: ((net(x) - y) ** 2).mean(), torch.optim.Adam(net.parameters(), lr=0.05),
                              trainer.SeededOrder(steps, 3), None, epochs=epochs, device="cpu", seed=3,
                              select_best=False, min_batch=1, accumulate=accumulate, **kw)
        return history.to_dict(), {k: v.detach().clone() for k, v in net.state_dict().items()}
    net = _net()
    if kind == "mse":
        def loss_of(images, targets):
            return ((net(images.float() / 255) - targets) ** 2).mean()
    else:
        def loss_of(images, targets):  # a contrastive loss on the gathered global batch
            return bleep_loss(gather_batch(net(images.float() / 255)), gather_batch(targets / 10))
    train_rows, val_rows = trainer.reference_split(fold.train, "spots", 0.2, 0)
    history = trainer.fit(net, loss_of, torch.optim.AdamW(net.parameters(), lr=0.01),
                          PatchDataset(fold.train, rows=train_rows), PatchDataset(fold.train, augment=False, rows=val_rows),
                          epochs=epochs, batch_size=8, device="cpu", seed=0, accumulate=accumulate, **kw)
    return history.to_dict(), {k: v.detach().clone() for k, v in net.state_dict().items()}


def _gathered_losses(rank: int, world: int) -> dict[str, np.ndarray]:
    """Each loss on the gathered global batch of 9 (shares of 4 and 5 rows), with this rank's gradients."""
    from stbench.nn.sharded import gather_batch, sharded_step
    from stbench_contrastive.losses import bleep_loss, clip_loss, image_centric_loss

    out = {}
    g = torch.Generator().manual_seed(0)
    image, spot = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, 6, generator=g, dtype=torch.float64)
    start, stop = shard_bounds(9, rank, world)
    for name, fn in (("heclip", image_centric_loss), ("bleep", bleep_loss),
                     ("clip", lambda i, s: clip_loss(i, s, torch.tensor(2.0, dtype=torch.float64)))):
        i, s = image[start:stop].clone().requires_grad_(), spot[start:stop].clone().requires_grad_()
        with sharded_step(9, start, stop):
            loss = fn(gather_batch(i), gather_batch(s))
        loss.backward()
        # every rank's loss is the global loss, and the gathers sum their gradients: divide by the ranks
        out[name] = np.concatenate([[loss.item()], (i.grad / world).flatten().numpy(), (s.grad / world).flatten().numpy()])
    return out


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {kind: _train(kind) for kind in KINDS}
        losses = _gathered_losses(rank, world)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"history": {k: h for k, (h, _) in results.items()},
                       "losses": {k: v.tolist() for k, v in losses.items()}}, f)
        np.savez(os.path.join(out, f"rank{rank}.npz"),
                 **{f"{k}/{name}": v.numpy() for k, (_, sd) in results.items() for name, v in sd.items()})
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    try:
        torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2)
    except torch.multiprocessing.ProcessExitedException:  # gloo's rendezvous on a freshly chosen port can
        torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2)  # lose a race: once more
    ranks = []
    for r in range(2):
        data = json.loads((out / f"rank{r}.json").read_text())
        data["state"] = dict(np.load(out / f"rank{r}.npz"))
        ranks.append(data)
    return ranks


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _max_diff(state: dict, ref: dict, kind: str) -> float:
    return max(float(np.abs(state[f"{kind}/{k}"].astype(np.float64) - v.double().numpy()).max()) for k, v in ref.items())


@pytest.mark.parametrize("kind", ["mse", "bleep"])
def test_two_processes_train_like_one_on_the_same_global_batch(two_processes, one_thread, kind):
    history, state = _train(kind)
    for rank in two_processes:  # both ranks end with the single process's weights and history
        assert _max_diff(rank["state"], state, kind) < 1e-4
        got = rank["history"][kind]
        assert got["best_epoch"] == history["best_epoch"]
        for a, b in zip(got["epochs"], history["epochs"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_whole_steps_go_one_per_process_like_accumulating_them(two_processes, one_thread):
    history, state = _train("slides", accumulate=2)
    assert _max_diff(two_processes[0]["state"], state, "slides") < 1e-5
    assert [e["train_loss"] for e in two_processes[1]["history"]["slides"]["epochs"]] == pytest.approx(
        [e["train_loss"] for e in history["epochs"]], rel=1e-6)


def test_gathered_contrastive_losses_equal_the_single_process_loss_and_gradients(two_processes):
    g = torch.Generator().manual_seed(0)
    image, spot = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, 6, generator=g, dtype=torch.float64)
    from stbench_contrastive.losses import bleep_loss, clip_loss, image_centric_loss

    for name, fn in (("heclip", image_centric_loss), ("bleep", bleep_loss),
                     ("clip", lambda i, s: clip_loss(i, s, torch.tensor(2.0, dtype=torch.float64)))):
        i, s = image.clone().requires_grad_(), spot.clone().requires_grad_()
        loss = fn(i, s)
        loss.backward()
        for rank, data in enumerate(two_processes):
            start, stop = shard_bounds(9, rank, 2)
            want = np.concatenate([[loss.item()], i.grad[start:stop].flatten().numpy(), s.grad[start:stop].flatten().numpy()])
            assert np.allclose(data["losses"][name], want, atol=1e-12), name


def test_accumulating_two_half_batches_equals_one_batch(one_thread):
    # no batch norm or dropout here: with them a micro-batch is not a share of one batch
    fold = tiny_fold()
    rows = np.arange(32)
    results = []
    for batch_size, accumulate in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, 12))
        trainer.fit(net, lambda x, y: ((net(x.float() / 255) - y) ** 2).mean(), torch.optim.SGD(net.parameters(), lr=0.01),
                    PatchDataset(fold.train, rows=rows), None, epochs=2, batch_size=batch_size, device="cpu", seed=0,
                    accumulate=accumulate)
        results.append(net[1].weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_a_stopped_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    kw = dict(lr_schedule="cosine", warmup_steps=2)
    history, state = _train("mse", epochs=4, **kw)

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(trainer, "_after_epoch", stop)
    with checkpointing(tmp_path / "ckpt"), pytest.raises(KeyboardInterrupt):
        _train("mse", epochs=4, **kw)
    saved = tmp_path / "ckpt" / "last.safetensors"
    assert saved.is_file() and saved.read_bytes()[8:9] == b"{"  # safetensors, not a pickle
    monkeypatch.setattr(trainer, "_after_epoch", None)
    with checkpointing(tmp_path / "ckpt", resume=True):
        resumed_history, resumed = _train("mse", epochs=4, **kw)
    assert resumed_history == history
    assert all(torch.equal(resumed[k], v) for k, v in state.items())


def test_precision_is_an_option_with_one_line_errors():
    assert resolve_precision("auto", "cpu") == "32" and resolve_precision("auto", "cuda:1") == "bf16-mixed"
    assert resolve_precision("32", "cuda") == "32"
    with pytest.raises(Exception, match="needs a CUDA device"):
        resolve_precision("bf16-mixed", "cpu")
    assert not trainer.autocast("cpu")._enabled and not trainer.autocast("cuda", "32")._enabled


def test_every_trained_model_card_states_its_precision():
    from stbench.plugins import get_plugin_manager

    plugins = get_plugin_manager(env={})
    for name in ("heclip", "bleep", "clip", "stnet", "histogene"):
        cls = plugins.models.get(name)
        assert cls.Options().precision == "auto" and cls.Options().accumulate == 1
        assert any("bf16" in d and "precision=32" in d for d in cls.card.deviations), name


def test_launchers_and_their_errors():
    assert launched({}) is None and launched({"RANK": "0", "WORLD_SIZE": "1"}) is None
    w = launched({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.main) == (3, 4, 1, 2, False)
    srun = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "2(x2)"}
    assert launched(srun) == type(w)(2, 4, 0, 2)
    assert check_world(1, 1, srun) is None  # a batch script's variables alone start nothing
    assert check_world(2, 2, srun).size == 4
    with pytest.raises(Exception, match="needs a launcher"):
        check_world(1, 2, {})
    with pytest.raises(Exception, match="started 4 processes"):
        check_world(2, 1, {"RANK": "0", "WORLD_SIZE": "4"})


@pytest.mark.parametrize("args, message", [
    (["--num-nodes", "2"], "needs a launcher"),
    (["-o", "precision=bf16-mixed"], "needs a CUDA device"),
    (["--devices", "2", "-o", "precision=bf16-mixed"], "needs a CUDA device"),
    (["--devices", "2", "--device", "mps"], "MPS"),
])
def test_run_errors_a_user_can_cause_are_one_line(cli, tmp_path, args, message):
    device = [] if "--device" in args else ["--device", "cpu"]
    result = cli("run", "--model", "heclip", "--dataset", "synthetic", "--out", str(tmp_path), *device, *args)
    assert result.exit_code == 2 and message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_more_gpus_than_exist_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = cli("run", "--model", "heclip", "--dataset", "synthetic", "--out", str(tmp_path), "--device", "cuda",
                 "--devices", "2")
    assert result.exit_code == 2 and "asks for 2 GPUs but this machine has 1" in result.output


def test_device_side_augmentation_gives_the_same_batch():
    fold = tiny_fold()
    for views in (1, 2):
        ds = PatchDataset(fold.train, views=views, seed=5)
        ds.set_epoch(3)
        idx = np.arange(0, len(ds), 3)
        host, targets, _ = ds.batch(idx)
        device, device_targets, _ = ds.batch(idx, device="cpu")
        assert torch.equal(host, device) and torch.equal(targets, device_targets)
        assert device.is_contiguous()


def _predictions(path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


RUN = ["--model", "heclip", "--dataset", "synthetic", "--folds", "syn1", "-o", "profile=quick", "-o", "epochs=2",
       "-o", "input_px=32", "-o", "batch_size=16", "--device", "cpu"]
TINY_LR = ["-o", "lr=1e-7"]


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_predictions(tmp_path, monkeypatch):
    from stbench.plugins import get_plugin_manager
    from stbench.runner import RunRequest, run

    plugins = get_plugin_manager(env={})
    opts = ("profile=quick", "epochs=2", "input_px=32", "batch_size=16")
    req = RunRequest("heclip", "synthetic", folds="syn1", options=opts, device="cpu", checkpoints=True)
    _, whole = run(plugins, req, tmp_path / "a")

    def stop(epoch):
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(trainer, "_after_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run(plugins, req, tmp_path / "b")
    left = list((tmp_path / "b" / "checkpoints").rglob("*"))
    assert [p.name for p in left if p.is_file()] == ["last.safetensors"]
    monkeypatch.setattr(trainer, "_after_epoch", None)
    result, resumed = run(plugins, RunRequest(**{**req.__dict__, "resume": True}), tmp_path / "b")
    assert not (tmp_path / "b" / "checkpoints").exists()  # a finished run keeps no training state
    a, b = _predictions(str(whole).replace(".json", ".predictions.h5")), _predictions(str(resumed).replace(".json", ".predictions.h5"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert result.environment["world_size"] == 1 and result.environment["precision"] == "32"


def test_run_with_two_devices_matches_one_process(tmp_path):
    """End to end through ``--devices 2``. A small learning rate: the two processes compute the first step's
    loss and gradients to float rounding (batch-norm statistics are summed over ranks), and at the quick
    profile's rate Adam's first, sign-like updates amplify that rounding within a few steps; the exact
    equality at full rate is tested above on a small network."""
    from conftest import run_stbench

    env = {"OMP_NUM_THREADS": "1"}
    one = run_stbench("run", *RUN, *TINY_LR, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr
    two = run_stbench("run", *RUN, *TINY_LR, "--devices", "2", "--out", str(tmp_path / "two"), env=env)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("results:") == 1  # rank 0 alone prints and writes
    (p1,), (p2,) = (list((tmp_path / d / "heclip").glob("*.json")) for d in ("one", "two"))
    r1, r2 = json.loads(p1.read_text()), json.loads(p2.read_text())
    assert p1.name == p2.name and r2["environment"]["world_size"] == 2 and r1["environment"]["world_size"] == 1
    h1, h2 = r1["folds"][0]["history"], r2["folds"][0]["history"]
    assert h1["best_epoch"] == h2["best_epoch"]
    for e1, e2 in zip(h1["epochs"], h2["epochs"]):
        assert e1["train_loss"] == pytest.approx(e2["train_loss"], rel=1e-4)
        assert e1["val_loss"] == pytest.approx(e2["val_loss"], rel=1e-4)
    a, b = (_predictions(str(p).replace(".json", ".predictions.h5")) for p in (p1, p2))
    emb = [k for k in a if "embedding" in k and a[k].dtype.kind == "f"]
    assert emb and all(np.abs(a[k] - b[k]).max() < 2e-3 * np.abs(a[k]).max() for k in emb)
    assert math.isclose(r1["summary"]["pearson"]["mean"], r2["summary"]["pearson"]["mean"], abs_tol=1e-3)


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    from stbench.nn.resume import STATE_FILE, load_state

    (tmp_path / STATE_FILE).write_bytes(b"\x10\x00\x00\x00not a safetensors file")
    net = torch.nn.Linear(2, 2)
    with caplog.at_level("WARNING", logger="stbench"):
        state = load_state(tmp_path, module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), scheduler=None,
                           batches=object(), generators=(), epochs=2)
    assert state is None and "unreadable" in caplog.text
