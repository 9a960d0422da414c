import numpy as np
import pytest
import torch

from stbench.options import build_options
from stbench.plugins import get_plugin_manager
from stbench.runner import RunRequest, run
from stbench.testing import check_model, tiny_fold
from stbench_heclip.model import HECLIP

TINY = ["encoder=test_efficientnet", "pretrained=false", "epochs=2", "batch_size=16", "input_px=16", "top_k=5"]


def test_check_model_heclip():
    check_model(HECLIP, TINY)


@pytest.mark.parametrize("gene_set, spot_projection, dim", [("hvg", False, 12), ("heg", True, 8)])
def test_variant_follows_the_gene_set(gene_set, spot_projection, dim):
    fold = tiny_fold()
    opts, _ = build_options(HECLIP, TINY + ["projection_dim=8"])
    model = HECLIP(opts, dataset_info={"gene_set": gene_set})
    model.fit(fold.train, fold.genes)
    assert model.opts.spot_projection is spot_projection and model.opts.variant == gene_set
    emb = model.embed_images(fold.queries[0])
    assert emb.shape == (len(fold.queries[0]), dim)
    assert isinstance(model.net.spot_head, torch.nn.Identity) is (not spot_projection)


def test_augment_false_drops_the_second_view():
    opts, _ = build_options(HECLIP, TINY + ["augment=false"])
    assert HECLIP(opts).resolved_options(12).views == 1
    assert HECLIP(HECLIP.Options()).resolved_options(12).views == 2


def test_paper_protocol_uses_bgr_raw_input_and_test_time_augmentation():
    opts, _ = build_options(HECLIP, TINY)
    paper, strict = HECLIP(opts, protocol="paper"), HECLIP(opts, protocol="strict")
    assert (paper.input_style, paper.eval_augment) == ("paper", True)
    assert (strict.input_style, strict.eval_augment) == ("strict", False)
    fold = tiny_fold()
    paper.fit(fold.train, fold.genes)
    a, b = paper.embed_images(fold.queries[0], salt=0), paper.embed_images(fold.queries[0], salt=1)
    assert not np.allclose(a, b)  # different random flips/rotations at inference


def test_short_fit_beats_random_k_on_synthetic(tmp_path):
    plugins = get_plugin_manager(env={})
    options = ("encoder=test_efficientnet", "pretrained=false", "epochs=3", "batch_size=32", "top_k=20")
    heclip, _ = run(plugins, RunRequest("heclip", "synthetic", folds="syn2", options=options), None)
    rand, _ = run(plugins, RunRequest("random-k", "synthetic", folds="syn2", options=("k=20",)), None)
    assert heclip.summary["pearson"]["mean"] > rand.summary["pearson"]["mean"] + 0.15
    assert heclip.folds[0]["history"]["epochs"][0]["train_loss"] > 0
