"""Each loss against a direct float64 implementation written from the spec's formulas."""
import math

import numpy as np
import pytest
import torch

from stbench.nn.heads import ProjectionHead
from stbench_contrastive.losses import bleep_loss, clip_loss, image_centric_loss


def softmax_rows(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_softmax_rows(a):
    m = a.max(1, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(1, keepdims=True))


def heclip_reference(I, S, T):
    """Algorithm 1: loss = mean_i -sum_j targets^T[i,j] log softmax_j(logits^T[i,:])."""
    B = len(I)
    logits = S @ I.T / T
    targets = softmax_rows(I @ I.T / T)
    total = 0.0
    for i in range(B):
        row = log_softmax_rows(logits.T)[i]
        total += -sum(targets.T[i, j] * row[j] for j in range(B))
    return total / B


def bleep_reference(I, S, T):
    B = len(I)
    logits = S @ I.T / T
    targets = softmax_rows(((I @ I.T) + (S @ S.T)) / 2 / T)
    ls, lsT = log_softmax_rows(logits), log_softmax_rows(logits.T)
    total = 0.0
    for i in range(B):
        spots = -sum(targets[i, j] * ls[i, j] for j in range(B))
        images = -sum(targets[j, i] * lsT[i, j] for j in range(B))
        total += (spots + images) / 2
    return total / B


def clip_reference(I, S, scale):
    B = len(I)
    In = I / np.linalg.norm(I, axis=1, keepdims=True)
    Sn = S / np.linalg.norm(S, axis=1, keepdims=True)
    logits = min(math.exp(scale), 100.0) * Sn @ In.T
    ce = lambda L: -np.mean([log_softmax_rows(L)[i, i] for i in range(B)])  # noqa: E731
    return (ce(logits) + ce(logits.T)) / 2


@pytest.mark.parametrize("seed, T", [(0, 1.0), (1, 0.5), (2, 2.0)])
def test_losses_equal_float64_reference(seed, T):
    rng = np.random.default_rng(seed)
    I, S = rng.normal(0, 1, (9, 6)), rng.normal(0, 1, (9, 6))
    ti, ts = torch.tensor(I), torch.tensor(S)
    assert image_centric_loss(ti, ts, T).item() == pytest.approx(heclip_reference(I, S, T), abs=1e-10)
    assert bleep_loss(ti, ts, T).item() == pytest.approx(bleep_reference(I, S, T), abs=1e-10)
    scale = math.log(1 / 0.07)
    assert clip_loss(ti, ts, torch.tensor(scale, dtype=torch.float64)).item() == pytest.approx(clip_reference(I, S, scale), abs=1e-10)
    assert clip_loss(ti, ts, torch.tensor(10.0, dtype=torch.float64)).item() == pytest.approx(clip_reference(I, S, 10.0), abs=1e-10)


def test_heclip_loss_is_not_symmetric_and_differs_from_bleep():
    rng = np.random.default_rng(3)
    I, S = torch.tensor(rng.normal(0, 1, (7, 5))), torch.tensor(rng.normal(0, 1, (7, 5)))
    assert not torch.isclose(image_centric_loss(I, S), image_centric_loss(S, I))
    assert not torch.isclose(image_centric_loss(I, S), bleep_loss(I, S))


def test_heclip_targets_are_not_detached_and_gradients_reach_encoder_and_head():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    head = ProjectionHead(4, 6)
    x = torch.randn(8, 3, 8, 8)
    spot = torch.randn(8, 6)
    image = head(encoder(x))
    loss = image_centric_loss(image, spot)
    loss.backward()
    assert encoder[0].weight.grad is not None and encoder[0].weight.grad.abs().sum() > 0
    assert head.projection.weight.grad.abs().sum() > 0
    # the targets are not detached: the gradient differs from the detached-targets version
    F = torch.nn.functional
    image2 = torch.randn(8, 6, requires_grad=True)
    image_centric_loss(image2, spot).backward()
    ours = image2.grad.clone()
    image2.grad = None
    targets = F.softmax(image2 @ image2.T, dim=-1).detach()
    (-(targets.T * F.log_softmax((spot @ image2.T).T, dim=-1)).sum(-1).mean()).backward()
    assert not torch.allclose(ours, image2.grad)

def test_projection_head_shape_and_residual():
    head = ProjectionHead(10, 4, dropout=0.0)
    out = head(torch.randn(3, 10))
    assert out.shape == (3, 4)
    assert torch.allclose(out.mean(-1), torch.zeros(3), atol=1e-5)
