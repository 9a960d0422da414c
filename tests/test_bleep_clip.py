import numpy as np
import pytest
import torch

from stbench.options import build_options
from stbench.testing import check_learns, check_model, tiny_fold
from stbench_bleep.model import BLEEP
from stbench_clip.model import CLIP

TINY = ["encoder=test_efficientnet", "pretrained=false", "epochs=2", "batch_size=16", "input_px=16", "top_k=5",
        "input_crop=none"]


@pytest.mark.parametrize("cls", [BLEEP, CLIP])
def test_check_model(cls):
    check_model(cls, TINY)


def test_paper_defaults():
    for cls in (BLEEP, CLIP):
        o = cls.Options()
        assert (o.batch_size, o.epochs, o.input_crop, o.projection_dim, o.retrieval_key) == (256, 4, 224, 256, "spot")
        assert o.encoder == "resnet50" and o.spot_projection and o.top_k == 50
    assert BLEEP.Options().loss == "bleep" and CLIP.Options().loss == "clip"


def test_clip_has_a_learnable_capped_logit_scale_and_bleep_none():
    fold = tiny_fold()
    opts, _ = build_options(CLIP, TINY)
    model = CLIP(opts)
    model.fit(fold.train, fold.genes)
    scale = model.net.logit_scale
    assert isinstance(scale, torch.nn.Parameter) and scale.requires_grad
    assert abs(float(scale.detach()) - np.log(1 / 0.07)) < 0.5
    bleep = BLEEP(build_options(BLEEP, TINY)[0])
    bleep.fit(fold.train, fold.genes)
    assert bleep.net.logit_scale is None


def test_retrieval_is_image_to_spot_embeddings():
    fold = tiny_fold()
    model = BLEEP(build_options(BLEEP, TINY + ["aggregation=top1", "projection_dim=8"])[0])
    model.fit(fold.train, fold.genes)
    ref = np.concatenate([s.expression for s in fold.train])
    assert np.allclose(model.ref_emb, model.embed_spots(ref), atol=1e-5)
    pred = model.predict(fold.queries[0])
    q = model.embed_images(fold.queries[0])
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = model.ref_emb / np.linalg.norm(model.ref_emb, axis=1, keepdims=True)
    best = np.argmax(qn @ rn.T, axis=1)
    assert np.allclose(pred, ref[best], atol=1e-6)


def test_centre_crop_is_bleeps_224_window():
    from stbench.nn.inputs import to_model_input

    x = torch.arange(256, dtype=torch.uint8).repeat(1, 3, 256, 1)
    out = to_model_input(x, "paper", crop=224)
    assert out.shape == (1, 3, 224, 224) and out[0, 0, 0, 0] == 16 and out[0, 0, 0, -1] == 239


@pytest.mark.parametrize("cls", [BLEEP, CLIP])
def test_short_fit_learns_the_synthetic_signal_and_beats_random_k(cls):
    r_model, r_random = check_learns(cls, ["encoder=test_efficientnet", "pretrained=false", "epochs=8", "batch_size=32",
                                           "top_k=20", "input_crop=none"])
    assert r_model > 0.2 and abs(r_random) < 0.2


def test_check_learns_fails_a_model_that_ignores_the_image():
    from stbench_baselines.models import RandomKModel

    with pytest.raises(AssertionError, match="model 'random-k' does not learn the synthetic signal"):
        check_learns(RandomKModel, ["k=20"])
