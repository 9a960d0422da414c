"""Frozen-encoder training of the contrastive models (``-o freeze_encoder=true``): the encoder is a fixed
feature extractor whose features come from stbench's feature cache (:mod:`stbench.nn.features`), and
only the projection heads (and CLIP's logit scale) are trained. Augmentation picks, per item and epoch,
one of the 8 cached flip/quarter-turn views with the same seeded draw as patch augmentation. The
encoder's own input size and normalisation apply (``input_style`` and ``eval_augment`` do not): a CPU
can then afford the encoder's full input size and many epochs."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def frozen_encoder(model: Any) -> Any:
    from stbench.nn.features import FrozenEncoder

    if getattr(model, "_frozen", None) is None:
        o = model.opts
        model._frozen = FrozenEncoder(o.encoder, o.pretrained, o.weights, o.input_px, o.input_crop,
                                      device=model.device, batch_size=max(o.batch_size, 64))
    return model._frozen


def fit_heads(model: Any, train: Sequence[Any], opts: Any) -> None:
    import torch

    from stbench.nn.features import FeatureBatches, slide_views
    from stbench.nn.trainer import fit, fit_options, reference_split

    from .model import build_network

    views = list(range(8)) if opts.augment else [0]
    feats = slide_views(train, frozen_encoder(model), views, progress=model._progress)
    targets = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
    train_rows, val_rows = reference_split(train, opts.val, opts.val_fraction, model.seed)
    batches = FeatureBatches(feats, targets, np.concatenate([train_rows] * opts.views), opts.batch_size,
                             seed=model.seed, views=views, augment=opts.augment)
    val = (FeatureBatches(feats, targets, val_rows, opts.batch_size, seed=model.seed, views=views, shuffle=False)
           if len(val_rows) else None)
    net = build_network(opts, len(model.genes), in_features=feats.shape[-1]).to(model.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    model.history = fit(net, model._head_loss_fn(net, opts), optimizer, batches, val, epochs=opts.epochs,
                        device=model.device, seed=model.seed, workdir=model.workdir, progress=model._progress,
                        **fit_options(opts))
    model.net = net


def embed_frozen(model: Any, slide: Any) -> np.ndarray:
    """Image embeddings of a slide: the image head on its cached (unflipped) features."""
    import torch

    from stbench.nn.features import features_of

    feats = features_of(slide.images, frozen_encoder(model), progress=model._progress, task=f"features {slide.slide_id}")
    model.net.eval()
    with torch.no_grad():
        return model.net.image_head(torch.from_numpy(feats).to(model.device)).float().cpu().numpy()
