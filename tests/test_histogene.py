import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from stbench.errors import DataError
from stbench.eval.metrics import pearson
from stbench.options import build_options
from stbench.slide import SlidePatches
from stbench.data.synthetic import SyntheticDataset
from stbench.testing import check_model, fit_tiny, tiny_fold
from stbench_baselines.models import RandomKModel
from stbench_histogene.model import HisToGene, slide_tokens

SMALL = ["dim=32", "depth=2", "heads=2", "dim_head=16", "mlp_dim=64", "patch_crop=16"]
TINY = SMALL + ["epochs=2", "lr=1e-3"]


def fitted(options, fold=None):
    return fit_tiny(HisToGene, options, fold)


def test_check_model_histogene():
    check_model(HisToGene, TINY)


def test_paper_defaults():
    o = HisToGene.Options()
    assert (o.patch_crop, o.input_px, o.input_norm, o.dim, o.depth, o.heads, o.dim_head, o.mlp_dim) == (
        112, None, "raw", 1024, 8, 16, 64, 2048)
    assert (o.dropout, o.n_pos, o.positions, o.lr, o.epochs) == (0.1, 64, "raw", 1e-5, 100)


def test_tokens_are_the_centred_crop_flattened_row_major():
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    patch = np.stack([rows % 256, cols % 256, (rows + cols) % 256], -1).astype(np.uint8)[None]
    slide = SlidePatches("s", np.array(["a"]), np.zeros((1, 2)), np.zeros((1, 2)), patch, ("g",))
    tokens = slide_tokens(slide, 112, None)
    assert tokens.shape == (1, 112 * 112 * 3) and tokens.dtype == torch.uint8
    np.testing.assert_array_equal(tokens.numpy().reshape(112, 112, 3), patch[0, 72:184, 72:184])
    assert slide_tokens(slide, 112, 32).shape == (1, 32 * 32 * 3)


def test_input_norm_unit_divides_raw_pixels_by_255_and_dataset_standardises():
    raw, fold = fitted(TINY + ["epochs=1"])
    unit, _ = fitted(TINY + ["epochs=1", "input_norm=unit"], fold)
    unit.net.load_state_dict({k: v for k, v in raw.net.state_dict().items() if not k.startswith("pixel_")}, strict=False)
    assert unit.net.pixel_std.tolist() == [255.0] * 3
    tokens = unit.tokens(fold.queries[0])
    with torch.no_grad():
        expected = raw.net.patch_embed(tokens.float() / 255)
        torch.testing.assert_close(unit.net.embed(tokens), expected)
        assert not torch.allclose(raw.net.embed(tokens), expected)
    # "dataset": per-channel mean/std of the training tokens (the centred crops of the reference patches)
    standard, _ = fitted(TINY + ["epochs=1", "input_norm=dataset"], fold)
    pixels = np.concatenate([np.asarray(s.images, dtype=np.float64).reshape(-1, 3) for s in fold.train])
    np.testing.assert_allclose(standard.net.pixel_mean.numpy(), pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(standard.net.pixel_std.numpy(), pixels.std(0, ddof=1), rtol=1e-4)


def test_position_embeddings_are_indexed_by_the_spot_grid():
    model, fold = fitted(TINY)
    query = fold.queries[0]
    base = model.predict(query)
    grid = np.array(query.grid)
    grid[0] = [40, 40]  # a position no spot uses
    moved = dataclasses.replace(query, grid=grid)
    after = model.predict(moved)
    assert np.abs(after[0] - base[0]).max() > 1e-3
    # with both position tables zeroed, the spot's position no longer matters (its patch alone does)
    with torch.no_grad():
        model.net.x_embed.weight.zero_()
        model.net.y_embed.weight.zero_()
    np.testing.assert_allclose(model.predict(moved), model.predict(query), rtol=1e-5, atol=1e-5)


def test_grid_positions_outside_the_tables_are_an_error_unless_shifted():
    model, fold = fitted(TINY + ["epochs=1"])
    query = fold.queries[0]
    far = dataclasses.replace(query, grid=np.array(query.grid) + 60)
    with pytest.raises(DataError, match="n_pos=68"):
        model.predict(far)
    shifted, _ = fitted(TINY + ["epochs=1", "positions=shift"], fold)
    np.testing.assert_allclose(shifted.predict(far), shifted.predict(query), rtol=1e-5, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) that any aten op returns, backward included."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_a_5000_spot_slide_trains_and_predicts_without_an_n_by_n_attention_matrix():
    # the recorder does see a naive attention matrix (heads x N x N)
    q = torch.randn(1, 4, 300, 16)
    with LargestTensor() as rec:
        (q @ q.transpose(-1, -2)).softmax(-1) @ q
    assert rec.largest == 4 * 300 * 300

    n, px, genes = 5000, 8, 8
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(100), np.arange(50))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    slide = SlidePatches("big", np.array([f"s{i}" for i in range(n)]), grid * 10.0, grid,
                         rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8), tuple(f"g{i}" for i in range(genes)),
                         rng.normal(size=(n, genes)).astype(np.float32))
    opts, _ = build_options(HisToGene, ["dim=64", "depth=2", "heads=4", "dim_head=16", "mlp_dim=128",
                                        "patch_crop=8", "n_pos=100", "epochs=1", "embed_chunk=512"])
    model = HisToGene(opts)
    with LargestTensor() as rec:
        model.fit([slide], slide.genes)  # one forward + backward over the 5,000-token sequence
        pred = model.predict(slide.without_expression())
    assert pred.shape == (n, genes) and np.all(np.isfinite(pred))
    # a naive attention would return heads x N x N = 100M elements per layer; the largest tensor
    # here is the (N, 8*8*3) token matrix
    assert rec.largest <= n * px * px * 3, rec.largest


def test_short_fit_beats_random_k_on_synthetic():
    ds = SyntheticDataset("t", ("a", "b", "c", "d"), ("d",), "single", grid_width=10, grid_height=8,
                          n_genes=16, n_signal=8, patch_px=16, seed=0)
    fold = ds.prepare(ds.folds("single")[0])
    query, truth = fold.queries[0], fold.truth["d"]
    model, _ = fitted(SMALL + ["epochs=60", "lr=1e-3"], fold)
    random_k = RandomKModel(RandomKModel.Options(k=20))
    random_k.fit(fold.train, fold.genes)
    r_model = np.nanmean(pearson(truth, model.predict(query)))
    r_random = np.nanmean(pearson(truth, random_k.predict(query)))
    assert r_model > r_random + 0.3, (r_model, r_random)
    assert len(model.history.epochs) == 60 and model.history.best_epoch == 60
