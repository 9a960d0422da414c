"""The projection head of image-expression contrastive learning (Xie et al. 2023, after the image-text
projection head of Radford et al. 2021): maps an encoder's features, or an expression vector, into the shared embedding space."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """p = Linear(x); h = LayerNorm(Dropout(Linear(GELU(p))) + p)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(self.gelu(p))) + p)
