"""The three contrastive losses, written from the specs (model_specs.md sections 1.6, 2.4, 3).

``image`` and ``spot`` are (B, D) embeddings. Row-wise soft cross-entropy CE(P, Q) means
mean_i of -sum_j Q[i, j] log softmax_j(P[i, :]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row -sum_j targets[i, j] * log_softmax(logits)[i, j] (not averaged)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def image_centric_loss(image: torch.Tensor, spot: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """HECLIP (Algorithm 1): one direction, image -> spot, soft targets from image-image similarity.

    logits = S I^T / T; targets = softmax_rows(I I^T / T); loss = mean_i CE(logits^T, targets^T)_i.
    As in the published code, the targets are not detached (gradients flow through them) and are
    the transposed row-softmax, whose rows need not sum to 1.
    """
    logits = spot @ image.T / temperature
    targets = F.softmax(image @ image.T / temperature, dim=-1)
    return soft_cross_entropy(logits.T, targets.T).mean()


def bleep_loss(image: torch.Tensor, spot: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP: symmetric soft-target loss; targets = softmax_rows(((I I^T + S S^T) / 2) / T)."""
    logits = spot @ image.T / temperature
    targets = F.softmax((image @ image.T + spot @ spot.T) / 2 / temperature, dim=-1)
    spots_loss = soft_cross_entropy(logits, targets)
    images_loss = soft_cross_entropy(logits.T, targets.T)
    return ((spots_loss + images_loss) / 2).mean()


def clip_loss(image: torch.Tensor, spot: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with one-hot targets on L2-normalised embeddings; scale = exp(logit_scale),
    capped at 100 as in OpenAI CLIP."""
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * F.normalize(spot, dim=-1) @ F.normalize(image, dim=-1).T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
