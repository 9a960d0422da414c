import numpy as np
import torch

from stbench.data.loader import PatchDataset, augment, make_loader
from stbench.testing import tiny_fold


def dihedral(p):
    """The 8 flips/rotations of an (H, W, 3) patch."""
    out = []
    for q in (p, p[:, ::-1]):
        for k in range(4):
            out.append(np.rot90(q, k))
    return out


def test_items_are_uint8_chw_with_expression():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=False)
    img, expr, i = ds[5]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 16, 16)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), fold.train[0].images[5])
    assert np.allclose(expr.numpy(), fold.train[0].expression[5]) and i == 5
    assert len(ds) == sum(len(s) for s in fold.train)
    img2, expr2, _ = ds[len(fold.train[0]) + 2]
    assert np.array_equal(img2.permute(1, 2, 0).numpy(), fold.train[1].images[2])


def test_two_views_are_dihedral_transforms_and_seeded():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=True, views=2, seed=1)
    views, _, _ = ds[3]
    assert tuple(views.shape) == (2, 3, 16, 16)
    original = fold.train[0].images[3]
    for v in views:
        hwc = v.permute(1, 2, 0).numpy()
        assert any(np.array_equal(hwc, d) for d in dihedral(original))
    again, _, _ = PatchDataset(fold.train, augment=True, views=2, seed=1)[3]
    assert torch.equal(views, again)
    changed = 0
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        changed += not torch.equal(ds[3][0], views)
    assert changed >= 3


def test_augment_numpy_and_torch_agree():
    p = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    t = torch.from_numpy(p).permute(2, 0, 1)
    for params in [(True, False, 1), (False, True, 3), (True, True, 2), (False, False, 0)]:
        a = augment(p, *params)
        b = augment(t, *params).permute(1, 2, 0).numpy()
        assert np.array_equal(np.ascontiguousarray(a), b)


def test_workers_give_the_same_batches_as_the_main_process():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=True, seed=3)
    main = [b[0] for b in make_loader(ds, 16, shuffle=True, seed=5, workers=0)]
    multi = [b[0] for b in make_loader(ds, 16, shuffle=True, seed=5, workers=2)]
    assert len(main) == len(multi) and all(torch.equal(a, b) for a, b in zip(main, multi))


def test_rows_select_a_subset_and_query_slides_have_no_targets():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=False, rows=[0, 50, 60])
    assert len(ds) == 3
    assert np.array_equal(ds[1][0].permute(1, 2, 0).numpy(), fold.train[1].images[50 - len(fold.train[0])])
    q = PatchDataset(fold.queries, augment=False)
    assert q[0][1].numel() == 0


def test_memory_budget_serves_the_same_patches_and_is_not_pickled():
    import pickle

    fold = tiny_fold()
    cached = PatchDataset(fold.train, augment=True, seed=2)
    direct = PatchDataset(fold.train, augment=True, seed=2, memory_mb=0)
    for i in (0, 7, 60):
        assert torch.equal(cached[i][0], direct[i][0])
    assert set(cached._in_memory) == {0, 1} and direct._in_memory == {}
    assert pickle.loads(pickle.dumps(cached))._in_memory == {}
    one_slide = fold.train[0].images.nbytes / 2**20
    partial = PatchDataset(fold.train, memory_mb=one_slide * 1.5)
    partial[0], partial[60]
    assert set(partial._in_memory) == {0}


def test_set_epoch_reaches_persistent_workers():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=True, seed=4)
    loader = make_loader(ds, 32, shuffle=False, seed=1, workers=2)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        epochs.append(torch.cat([b[0] for b in loader]))
    assert not torch.equal(epochs[0], epochs[1])
    reference = PatchDataset(fold.train, augment=True, seed=4)
    reference.set_epoch(1)
    assert torch.equal(epochs[1], torch.stack([reference[i][0] for i in range(len(reference))]))


def test_batches_equal_the_stacked_items_for_both_backends():
    fold = tiny_fold()
    for views in (1, 2):
        ds = PatchDataset(fold.train, augment=True, views=views, seed=6)
        ds.set_epoch(3)
        idx = [5, 0, 61, 7, 33, 60, 2]
        images, targets, index = ds.batch(idx)
        items = [ds[i] for i in idx]
        assert torch.equal(images, torch.stack([it[0] for it in items]))
        assert torch.equal(targets, torch.stack([it[1] for it in items]))
        assert index.tolist() == idx
    threads = [b for b in make_loader(ds, 16, shuffle=False, workers=2)]
    processes = [b for b in make_loader(ds, 16, shuffle=False, workers=0, backend="processes")]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(threads, processes))


def test_threaded_batches_follow_the_dataloaders_shuffle_order():
    fold = tiny_fold()
    ds = PatchDataset(fold.train, augment=True, seed=1)
    threads = make_loader(ds, 10, shuffle=True, seed=2, workers=2, drop_last=True)
    reference = make_loader(ds, 10, shuffle=True, seed=2, workers=0, drop_last=True, backend="processes")
    passes = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        ours, theirs = list(threads), list(reference)
        assert len(ours) == len(theirs) == len(ds) // 10
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(ours, theirs))
        passes.append(torch.cat([b[2] for b in ours]))
    assert not torch.equal(passes[0], passes[1])
    full = torch.cat([b[2] for b in make_loader(ds, 10, shuffle=True, seed=2)])
    assert sorted(full.tolist()) == list(range(len(ds))) and full.tolist() != list(range(len(ds)))
    dropped = make_loader(ds, 16, shuffle=True, drop_last=True)
    assert len(dropped) == len(ds) // 16 and all(len(b[0]) == 16 for b in dropped)


def test_batches_read_from_the_cache_when_over_the_memory_budget():
    fold = tiny_fold()
    direct = PatchDataset(fold.train, augment=True, seed=2, memory_mb=0)
    cached = PatchDataset(fold.train, augment=True, seed=2)
    idx = [60, 3, 3, 17]
    assert torch.equal(direct.batch(idx)[0], cached.batch(idx)[0]) and direct._in_memory == {}
    query = PatchDataset(fold.queries, augment=False)
    assert query.batch([0, 1])[1].shape == (2, 0)
