"""Image inputs of the patch models: one home for the centred crop, the resize, the ImageNet statistics,
per-channel pixel statistics, and the two input styles of the contrastive models.

``paper`` reproduces the published code of image-expression contrastive learning (Xie et al. 2023
and the code derived from it): OpenCV's BGR channel order and raw 0..255 values (no scaling, no
ImageNet statistics). ``strict`` feeds RGB scaled to [0, 1] and normalised with the ImageNet mean and
std that the pretrained encoders expect.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

#: ImageNet per-channel mean and std of RGB in 0..1 (what torchvision and timm encoders were trained on).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def centre_crop(x: torch.Tensor, crop: int | None) -> torch.Tensor:
    """The centred ``crop`` x ``crop`` window of (..., H, W) images, as a view. A side that is already
    ``crop`` or shorter is kept whole; ``crop=None`` keeps the whole image. With an odd margin the
    window starts one pixel nearer the top / left edge."""
    if crop is None:
        return x
    h, w = x.shape[-2], x.shape[-1]
    top, left = max(h - crop, 0) // 2, max(w - crop, 0) // 2
    return x[..., top:top + crop, left:left + crop]


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Float (B, C, H, W) -> (B, C, size, size), bilinear and antialiased (``align_corners=False``);
    unchanged when ``size`` is None or the images already have that size."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def channel_stats(batches: Iterable[torch.Tensor], dim: int = 1, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, variance), float64, over every element of every batch.

    Each batch is a tensor whose axis ``dim`` is the channel (``dim=1`` for (B, C, H, W) images,
    ``dim=1`` or ``-1`` for (pixels, C) rows); it is summed over all other axes in float64, so the
    batches may be as large as memory allows and no more. ``ddof=0`` gives the population variance,
    ``ddof=1`` the sample variance. Raises ValueError when there are no elements."""
    total = total_sq = None
    count = 0
    for batch in batches:
        x = batch.double()
        channel = dim % x.ndim
        axes = tuple(d for d in range(x.ndim) if d != channel)
        s, sq = x.sum(dim=axes), (x * x).sum(dim=axes)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.numel() // x.shape[channel]
    if total is None or count == 0:
        raise ValueError("channel_stats: no pixels (the batches are empty)")
    mean = total / count
    return mean, (total_sq - count * mean * mean) / max(count - ddof, 1)


def to_model_input(batch: torch.Tensor, style: str, size: int | None = None, crop: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> float (B, 3, size, size) in the style's colour order and scale.

    ``crop`` first takes the centred crop*crop window (for example a 224 px field of view around the
    spot centre, the centre of the cached 256 px patch); ``size`` then resizes (:func:`resize`)."""
    x = resize(centre_crop(batch, crop).float(), size)
    if style == "paper":
        return x.flip(1)
    if style == "strict":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
        return (x - mean) / std
    raise ValueError(f"unknown input style '{style}' (use paper or strict)")
