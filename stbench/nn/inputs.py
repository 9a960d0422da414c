"""Patch tensors -> model input, faithful (``paper``) or fixed (``strict``).

``paper`` reproduces the published HECLIP/BLEEP code: OpenCV's BGR channel order and raw 0..255
values (no scaling, no ImageNet statistics). ``strict`` feeds RGB scaled to [0, 1] and normalised
with the ImageNet mean and std that the pretrained encoders expect.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_model_input(batch: torch.Tensor, style: str, size: int | None = None, crop: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> float (B, 3, size, size) in the style's colour order and scale.

    ``crop`` first takes the centred crop*crop window (BLEEP's 224 px around the spot centre is the
    centre of the cached 256 px patch); ``size`` then resizes (bilinear, antialiased)."""
    if crop is not None and batch.shape[-1] > crop:
        top, left = (batch.shape[-2] - crop) // 2, (batch.shape[-1] - crop) // 2
        batch = batch[..., top:top + crop, left:left + crop]
    x = batch.float()
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if style == "paper":
        return x.flip(1)
    if style == "strict":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
        return (x - mean) / std
    raise ValueError(f"unknown input style '{style}' (use paper or strict)")
