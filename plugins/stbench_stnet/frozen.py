"""ST-Net with a frozen encoder (``-o freeze_encoder=true``): only the linear head is trained, on features
from stbench's feature cache (:mod:`stbench.nn.features`) with the encoder's own input size and
normalisation. Dihedral augmentation picks one of the 8 cached views per item and epoch (the same draw as
patch augmentation); test-time averaging is the mean of the head over the 8 views' features."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from stbench.errors import OptionError


class FrozenHead(nn.Module):
    """ST-Net's head alone: Linear(encoder features -> genes)."""

    def __init__(self, in_features: int, n_genes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_features, n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def frozen_encoder(model: Any) -> Any:
    from stbench.nn.features import FrozenEncoder

    if getattr(model, "_frozen", None) is None:
        o = model.opts
        model._frozen = FrozenEncoder(o.encoder, o.pretrained, o.weights, o.input_px, o.input_crop,
                                      device=model.device, batch_size=max(2 * o.batch_size, 64))
    return model._frozen


def _views(opts: Any) -> tuple[int, ...]:
    from stbench.nn.features import DIHEDRAL_VIEWS

    return DIHEDRAL_VIEWS if opts.augment == "dihedral" or opts.tta else (0,)


def fit_head(model: Any, train: Sequence[Any], train_rows: np.ndarray, val_rows: np.ndarray) -> None:
    from stbench.nn.features import FeatureBatches, slide_views
    from stbench.nn.trainer import fit, fit_options

    opts = model.opts
    if opts.augment == "histogene":
        raise OptionError("model 'stnet': -o augment=histogene needs the image (colour jitter, rotations); with "
                          "-o freeze_encoder=true use augment=dihedral or none")
    views = _views(opts)
    feats = slide_views(train, frozen_encoder(model), views, progress=model._progress)
    targets = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
    net = FrozenHead(feats.shape[-1], targets.shape[1])
    if opts.head_init == "mean":
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.from_numpy(targets[train_rows].mean(0)))
    net = net.to(model.device)
    batches = FeatureBatches(feats, targets, train_rows, opts.batch_size, seed=model.seed, views=views,
                             augment=opts.augment == "dihedral")
    val = (FeatureBatches(feats, targets, val_rows, opts.batch_size, seed=model.seed, views=views, shuffle=False)
           if len(val_rows) else None)
    model.history = fit(net, model._loss_fn(net, inputs=lambda x, train: x), model._optimizer(net), batches, val,
                        epochs=opts.epochs, device=model.device, seed=model.seed, workdir=model.workdir,
                        progress=model._progress, select_best=opts.select == "best_val", **fit_options(opts))
    model.net = net


def predict_frozen(model: Any, slide: Any) -> np.ndarray:
    from stbench.nn.features import features_of

    views = _views(model.opts) if model.opts.tta else (0,)
    model.net.eval()
    total = None
    with torch.no_grad():
        for v in views:
            feats = features_of(slide.images, frozen_encoder(model), view=v, progress=model._progress,
                                task=f"features {slide.slide_id} view {v}")
            pred = model.net(torch.from_numpy(feats).to(model.device)).float().cpu().numpy()
            total = pred if total is None else total + pred
    return (total / len(views)).astype(np.float32)
