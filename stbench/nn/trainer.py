"""One training loop for every model: epochs, best-validation checkpoint, loss history.

The caller supplies ``loss_of(inputs, targets) -> scalar loss``, the optimiser and the training
steps: a :class:`~stbench.data.loader.PatchDataset` (shuffled mini-batches of uint8 patches, augmented per
epoch) or any :class:`Batches` (for example :class:`SeededOrder`: a fixed list of steps, such as one
whole slide per step, visited in a seeded order each epoch). The loop handles devices (bf16 autocast
on CUDA), progress, divergence checks, validation, the loss history (``history.json``) and
checkpointing (safetensors + JSON, reloaded with no unpickling).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_text
from ..errors import StbenchError
from ..data.loader import PatchDataset, make_loader
from .distributed import all_sum, checkpoint_settings, world


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def split_spots(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of spot rows into (train, validation), made before any augmentation."""
    order = np.random.default_rng([seed, 80_20]).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def reference_split(slides: Sequence[Any], val: str, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (over the concatenated slides) for training and validation: 80/20 of the SPOTS, or the
    last reference slide held out whole (``val='slice'``, needs two or more slides)."""
    sizes = [len(s) for s in slides]
    n = sum(sizes)
    if val == "slice" and len(slides) > 1:
        start = n - sizes[-1]
        return np.arange(start), np.arange(start, n)
    if val_fraction <= 0:
        return np.arange(n), np.arange(0)
    return split_spots(n, val_fraction, seed)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch}


class TrainingDiverged(StbenchError):
    """The loss or the weights became NaN or infinite."""


def check_finite_loss(loss: Union[torch.Tensor, float], epoch: int, step: int, steps: int, optimizer: Any) -> float:
    """The loss as a float; TrainingDiverged (one line: where, and what to change) if it is not finite."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        lr = optimizer.param_groups[0].get("lr") if getattr(optimizer, "param_groups", None) else None
        now = f", now {lr:g}" if isinstance(lr, (int, float)) else ""
        raise TrainingDiverged(f"training diverged: the loss became {value} at epoch {epoch + 1} (step {step + 1} of "
                               f"{steps}); lower the learning rate (-o lr=...{now}) and run again")
    return value


def check_finite_weights(module: nn.Module, epoch: int) -> None:
    for name, p in module.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise TrainingDiverged(f"training diverged: weight '{name}' became NaN or infinite in epoch {epoch + 1}; "
                                   f"lower the learning rate (-o lr=...) and run again")


def autocast(device: str, precision: str = "auto") -> Any:
    """The autocast context of a forward pass: bf16 on CUDA for ``auto`` and ``bf16-mixed``, none for ``32``
    (and on every other device)."""
    from .distributed import resolve_precision

    if resolve_precision(precision, device) == "bf16-mixed":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def save_checkpoint(module: nn.Module, path: Path, config: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"stbench": json.dumps(config)})
    write_text(path.with_suffix(".json"), json.dumps(config, indent=1) + "\n")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(module state, extra tensors, config) from a safetensors checkpoint."""
    from safetensors import safe_open

    module, extra = {}, {}
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("stbench", "{}"))
        for k in f.keys():
            (module if k.startswith("module.") else extra)[k.split(".", 1)[1]] = f.get_tensor(k)
    return module, extra, config


class Batches(Protocol):
    """The training steps of one epoch: ``len()`` steps, each an ``(inputs, targets)`` pair. ``inputs``
    is a tensor or a tuple of tensors (moved to the device as they are); a step counts ``len(targets)``
    items in the epoch's mean loss. With several processes a step is split into per-rank shares of its
    items, unless the class sets ``divisible = False`` (then each rank takes whole steps)."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterable[tuple[Any, Any]]: ...


class PatchBatches:
    """Mini-batches of a :class:`~stbench.data.loader.PatchDataset`, shuffled with ``seed`` (the last
    incomplete batch dropped when there is more than one), augmented anew each epoch (on ``device`` when
    given). Process ``rank`` of ``world`` builds only its share of each batch (:meth:`pieces`)."""

    divisible = True

    def __init__(self, dataset: PatchDataset, batch_size: int, *, seed: int, workers: int = 0, device: Any = None,
                 rank: int = 0, world: int = 1) -> None:
        self.dataset = dataset
        self.loader = make_loader(dataset, batch_size, shuffle=True, seed=seed, workers=workers,
                                  drop_last=len(dataset) > batch_size, rank=rank, world=world, device=device)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterable[tuple[Any, Any]]:
        self.dataset.set_epoch(epoch)
        return ((images, targets) for images, targets, _ in self.loader)

    def pieces(self, epoch: int) -> Iterable[tuple[Any, Any, int, int]]:
        """``(images, targets, items in the global batch, offset of this share)`` per step."""
        self.dataset.set_epoch(epoch)
        return ((images, targets, n, start) for (images, targets, _), n, start in self.loader.pieces())


class SeededOrder:
    """A fixed list of ``(inputs, targets)`` steps, all visited every epoch in an order drawn from
    ``(seed, epoch)``: for models that take one whole sample (a slide) per step. Not divisible: with
    several processes each takes whole steps (:func:`fit`)."""

    divisible = False

    def __init__(self, steps: Sequence[tuple[Any, Any]], seed: int) -> None:
        self.steps, self.seed = list(steps), seed

    def __len__(self) -> int:
        return len(self.steps)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.steps))

    def epoch(self, epoch: int) -> Iterable[tuple[Any, Any]]:
        return (self.steps[i] for i in self.order(epoch))


def to_device(x: Any, device: str, non_blocking: bool = False) -> Any:
    """A tensor, or a tuple / list of them, on ``device``."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(t, device, non_blocking) for t in x)
    return x.to(device, non_blocking=non_blocking)


LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
#: Called with the epoch index after every completed epoch (and its checkpoint); tests stop runs here.
_after_epoch: Callable[[int], None] | None = None


def train_epoch(module: nn.Module, loss_of: LossFn, optimizer: Any, batches: Batches, epoch: int, epochs: int, *,
                device: str, report: Callable[..., None], min_batch: int = 2, precision: str = "auto",
                accumulate: int = 1, scheduler: Any = None, step_fn: Any = None) -> float:
    """One epoch of optimiser steps; the mean training loss per item. Steps of fewer than ``min_batch``
    items are skipped; a non-finite loss or weight raises :class:`TrainingDiverged`. Each update
    accumulates ``accumulate`` steps (their gradients weighted by items); with several processes ``step_fn``
    is the data-parallel loss (:func:`stbench.nn.sharded.data_parallel`) and a step is the global batch."""
    from .steps import pieces, run_piece

    module.train()
    w = world()
    steps = rounds(batches, w.size)
    simple = w.size == 1 and accumulate == 1
    total, count, done, group, group_items = 0.0, 0, 0, 0, 0
    source = pieces(batches, epoch, w, min_batch)
    piece = next(source, None)
    while piece is not None:
        following = next(source, None)
        group += 1
        last = group == accumulate or following is None
        value, items = run_piece(piece, step_fn or loss_of, optimizer, device=device, precision=precision,
                                 world=w, simple=simple, zero=group == 1, sync=last or step_fn is None,
                                 where=(epoch, done, steps))
        group_items += piece.items
        if last:
            if not simple:
                for p in module.parameters():
                    if p.grad is not None:
                        p.grad.div_(group_items)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            group, group_items = 0, 0
        total, count, done = total + value, count + items, done + 1
        report("train", epoch * steps + done, epochs * steps, epoch=epoch + 1, loss=total / max(count, 1))
        piece = following
    check_finite_weights(module, epoch)
    return total / max(count, 1)


def rounds(batches: Batches, size: int) -> int:
    """Steps per epoch on each of ``size`` processes."""
    n = len(batches)
    return n if size == 1 or getattr(batches, "divisible", True) else -(-n // size)


def fit_options(opts: Any) -> dict[str, Any]:
    """The :func:`fit` keywords a model's Options carry (``precision``, ``accumulate``, ``lr_schedule``,
    ``warmup_steps``), for ``fit(..., **fit_options(opts))``."""
    keys = ("precision", "accumulate", "lr_schedule", "warmup_steps")
    return {k: getattr(opts, k) for k in keys if hasattr(opts, k)}


def make_schedule(optimizer: Any, kind: str, warmup_steps: int, total_steps: int) -> Any:
    """A per-update learning-rate factor: linear warm-up over ``warmup_steps``, then constant (``none``) or
    a cosine decay to 0 at ``total_steps`` (``cosine``); None when neither is asked for."""
    if kind == "none" and warmup_steps <= 0:
        return None
    if kind not in ("none", "cosine"):
        raise StbenchError(f"unknown learning-rate schedule '{kind}'; use none or cosine")
    span = max(total_steps - warmup_steps, 1)

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(t - warmup_steps, span) / span)) if kind == "cosine" else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(module: nn.Module, loss_of: LossFn, optimizer: Any, train: Union[PatchDataset, Batches],
        val: Union[PatchDataset, Batches, None], *, epochs: int, batch_size: int | None = None, device: str, seed: int,
        workers: int = 0, workdir: Path | None = None, progress: Callable[..., None] | None = None,
        select_best: bool = True, min_batch: int = 2, precision: str = "auto", accumulate: int = 1,
        lr_schedule: str = "none", warmup_steps: int = 0, generators: Sequence[torch.Generator] = ()) -> History:
    """Train for ``epochs``; keep the weights of the best validation epoch (``select_best``; the best
    training loss without validation) or of the last epoch. ``train`` is a PatchDataset (batched by
    ``batch_size``) or any :class:`Batches`; ``val`` (optional, either kind; a Batches' first epoch is the
    fixed validation set) is evaluated after every epoch. Writes ``history.json`` into ``workdir`` when one
    is given (rank 0).

    ``precision``: ``auto`` (bf16 autocast on CUDA, float32 elsewhere), ``bf16-mixed`` or ``32``; ``accumulate``:
    steps per optimiser update; ``lr_schedule`` / ``warmup_steps``: see :func:`make_schedule`.

    Several processes (a torch.distributed process group, :mod:`stbench.nn.distributed`): every rank takes
    its contiguous share of each global batch of ``batch_size`` (a not-divisible Batches: one whole step per
    rank, so a global step is ``world`` steps), batch statistics, dropout masks and gathered embeddings are
    those of the global batch (:mod:`stbench.nn.sharded`), and each rank's loss is scaled so that DDP's
    averaged gradient is the single-process gradient of the global batch. The validation loss is summed
    over ranks, so every rank picks the same best epoch. ``generators``: more torch generators the training
    draws from (saved for ``--resume``, :func:`stbench.nn.distributed.checkpointing`)."""
    batched = isinstance(train, PatchDataset) or (isinstance(val, PatchDataset) and len(val) > 0)
    if batched and batch_size is None:
        raise TypeError("fit: batch_size is required to batch a PatchDataset")
    autocast(device, precision)  # an unusable precision fails before any epoch
    w = world()
    if isinstance(train, PatchDataset):
        train = PatchBatches(train, batch_size, seed=seed, workers=workers, rank=w.rank, world=w.size,
                             device=device if device.startswith("cuda") else None)
    val_steps = _validation(val, batch_size, seed, workers, w)
    scheduler = make_schedule(optimizer, lr_schedule, warmup_steps, epochs * -(-rounds(train, w.size) // accumulate))
    step_fn = _data_parallel(module, loss_of, device) if w.size > 1 else None
    folder, _ = checkpoint_settings()
    keep = dict(module=module, optimizer=optimizer, scheduler=scheduler, batches=train, generators=generators)
    state = _start(epochs, keep)
    history = History(list(state["history"]["epochs"]), state["history"]["best_epoch"])
    best_loss, best_state = state["best_loss"], state["best_state"]
    report = progress or (lambda *a, **k: None)
    for epoch in range(state["epoch"], epochs):
        record = {"epoch": epoch + 1, "train_loss": train_epoch(
            module, loss_of, optimizer, train, epoch, epochs, device=device, report=report, min_batch=min_batch,
            precision=precision, accumulate=accumulate, scheduler=scheduler, step_fn=step_fn)}
        if val_steps is not None:
            record["val_loss"] = _validate(module, loss_of, val_steps, device, min_batch, precision)
        history.epochs.append(record)
        score = record.get("val_loss", record["train_loss"])
        if not select_best:  # the last epoch is kept: the weights are already in the module
            history.best_epoch = epoch + 1
        elif score < best_loss:
            best_loss, history.best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _epoch_done(folder, w, epoch, epochs, history, best_loss, best_state, keep)
    if best_state is not None:
        module.load_state_dict(best_state)
    if workdir is not None and w.main:
        write_text(Path(workdir) / "history.json", json.dumps(history.to_dict(), indent=1) + "\n")
    return history


def _data_parallel(module: nn.Module, loss_of: LossFn, device: str) -> Any:
    from .sharded import data_parallel

    return data_parallel(module, loss_of, device)


def _start(epochs: int, keep: dict[str, Any]) -> dict[str, Any]:
    """Where training starts: the state saved in the checkpoint folder (``resume``), else epoch 0."""
    from .resume import load_state

    folder, resume = checkpoint_settings()
    state = load_state(folder, epochs=epochs, **keep) if folder is not None and resume else None
    return state or {"epoch": 0, "history": History().to_dict(), "best_loss": math.inf, "best_state": None}


def _epoch_done(folder: Path | None, w: Any, epoch: int, epochs: int, history: History, best_loss: float,
                best_state: Any, keep: dict[str, Any]) -> None:
    from .resume import save_state

    if folder is not None and w.main:
        save_state(folder, epoch=epoch + 1, epochs=epochs, history=history.to_dict(), best_loss=best_loss,
                   best_state=best_state, **keep)
    if _after_epoch is not None:
        _after_epoch(epoch)


def _validation(val: Any, batch_size: int | None, seed: int, workers: int, w: Any) -> Any:
    """The validation batches of this rank: whole batches, every ``w.size``-th one; None without validation."""
    if val is None or not len(val):
        return None
    if isinstance(val, PatchDataset):
        return make_loader(val, batch_size, shuffle=False, seed=seed, workers=workers, rank=w.rank, world=w.size,
                           whole=True)
    return list(val.epoch(0))[w.rank::w.size]


def _validate(module: nn.Module, loss_of: LossFn, loader: Any, device: str, min_batch: int, precision: str) -> float:
    total, count = evaluation_sums(module, loss_of, loader, device, min_batch, precision)
    if world().size > 1:
        total, count = all_sum([total, count], device)
    return total / count if count else float("nan")


@torch.no_grad()
def evaluation_sums(module: nn.Module, loss_of: LossFn, loader: Any, device: str, min_batch: int = 2,
                    precision: str = "auto") -> tuple[float, int]:
    """(sum of loss x items, items) over a loader's ``(inputs, targets, ...)`` batches, in eval mode."""
    module.eval()
    total, count = 0.0, 0
    for batch in loader:
        inputs, targets = batch[0], batch[1]
        if len(targets) < min_batch:
            continue
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        with autocast(device, precision):
            total += float(loss_of(inputs, targets)) * len(targets)
        count += len(targets)
    return total, count


def evaluate(module: nn.Module, loss_of: LossFn, loader: Any, device: str, min_batch: int = 2,
             precision: str = "auto") -> float:
    """The mean loss per item over a loader's ``(inputs, targets, ...)`` batches, in eval mode."""
    total, count = evaluation_sums(module, loss_of, loader, device, min_batch, precision)
    return total / count if count else float("nan")
