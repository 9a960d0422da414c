"""The pieces of an epoch that one process computes, and one piece's forward and backward pass.

One process: a piece is a step. Several processes: every rank gets one piece per *round*, the rounds being
the same on every rank. A divisible step (a mini-batch) is one round whose pieces are the ranks' contiguous
shares of it, computed in a :func:`~stbench.nn.sharded.sharded_step`; a not-divisible one (a whole slide) is
taken whole, ``world`` consecutive steps making a round (a rank past the last step of the epoch's last round
computes a stand-in piece whose gradient is scaled to zero, so DDP's collectives still match).

Scaling: a rank backpropagates ``loss x world x its items`` (a per-item mean loss) or ``loss x round items``
(a loss that gathered the global batch, the same value on every rank, whose gathers already sum gradients
over ranks); DDP averages over ranks and :func:`~stbench.nn.trainer.train_epoch` divides by the items of
the update, which makes the update the item-weighted mean gradient of the update's rounds: the
single-process gradient of the global batch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

from ..data.loader import shard_bounds
from ..errors import StbenchError


@dataclass
class Piece:
    inputs: Any
    targets: Any
    items: int   # items of the round, all ranks together
    start: int   # offset of this rank's items in the round's global batch
    local: int   # this rank's items (0: a stand-in)
    split: bool  # a share of one global batch


def _rows(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_rows(t, start, stop) for t in x)
    return x[start:stop]


def pieces(batches: Any, epoch: int, w: Any, min_batch: int) -> Iterator[Piece]:
    """This rank's pieces of one epoch (steps of fewer than ``min_batch`` items left out)."""
    if w.size == 1:
        for inputs, targets in batches.epoch(epoch):
            if len(targets) >= min_batch:
                yield Piece(inputs, targets, len(targets), 0, len(targets), False)
        return
    if not getattr(batches, "divisible", True):
        yield from _whole(batches, epoch, w, min_batch)
        return
    if hasattr(batches, "pieces"):
        source = batches.pieces(epoch)
    else:
        source = ((_rows(i, *shard_bounds(len(t), w.rank, w.size)), t[slice(*shard_bounds(len(t), w.rank, w.size))],
                   len(t), shard_bounds(len(t), w.rank, w.size)[0]) for i, t in batches.epoch(epoch))
    for inputs, targets, items, start in source:
        if items < min_batch:
            continue
        if items < w.size:
            raise StbenchError(f"a training batch of {items} items cannot be split over {w.size} processes; "
                               f"use a larger batch_size or fewer --devices")
        yield Piece(inputs, targets, items, start, len(targets), True)


def _whole(batches: Any, epoch: int, w: Any, min_batch: int) -> Iterator[Piece]:
    steps = [(i, t) for i, t in batches.epoch(epoch) if len(t) >= min_batch]
    for first in range(0, len(steps), w.size):
        group = steps[first:first + w.size]
        items = sum(len(t) for _, t in group)
        mine = group[w.rank] if w.rank < len(group) else None
        inputs, targets = mine or group[0]
        yield Piece(inputs, targets, items, 0, len(targets) if mine is not None else 0, False)


def run_piece(piece: Piece, loss_fn: Any, optimizer: Any, *, device: str, precision: str, world: Any, simple: bool,
              zero: bool, sync: bool, where: tuple[int, int, int]) -> tuple[float, int]:
    """Forward and backward pass of one piece; returns (loss x items of the round, items of the round),
    summed over ranks. ``zero``: clear the gradients first; ``sync``: DDP all-reduces in this backward."""
    from .trainer import autocast, check_finite_loss, to_device

    inputs, targets = to_device(piece.inputs, device, True), to_device(piece.targets, device, True)
    if piece.split:
        from .sharded import sharded_step

        shard = sharded_step(piece.items, piece.start, piece.start + piece.local)
    else:
        shard = contextlib.nullcontext(None)
    with contextlib.nullcontext() if sync else loss_fn.no_sync():  # DDP decides in the forward pass
        with shard as step, autocast(device, precision):
            loss = loss_fn(inputs, targets)
        gathered = step is not None and step.gathered
        value = _global_value(float(loss.detach()), piece, gathered, world, device)
        value = check_finite_loss(value, where[0], where[1], where[2], optimizer)
        if zero:
            optimizer.zero_grad(set_to_none=True)
        if not simple:
            loss = loss * (piece.items if gathered else world.size * piece.local)
        loss.backward()
    return value * piece.items, piece.items


def _global_value(value: float, piece: Piece, gathered: bool, world: Any, device: str) -> float:
    """The loss of the round's global batch (NaN on every rank when any rank's is not finite)."""
    if world.size == 1:
        return value
    from .distributed import all_sum

    share = value * piece.items / world.size if gathered else value * piece.local
    finite = math.isfinite(share)
    total, bad = all_sum([share if finite else 0.0, 0.0 if finite else 1.0], device)
    return total / piece.items if not bad else math.nan
