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


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, steps: int, optimizer: Any) -> float:
    """The loss as a float; TrainingDiverged (one line: where, and what to change) if it is not finite."""
    value = float(loss.detach())
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


def autocast(device: str) -> Any:
    if device.startswith("cuda"):
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
    items in the epoch's mean loss."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterable[tuple[Any, Any]]: ...


class PatchBatches:
    """Mini-batches of a :class:`~stbench.data.loader.PatchDataset`, shuffled with ``seed`` (the last
    incomplete batch dropped when there is more than one), augmented anew each epoch."""

    def __init__(self, dataset: PatchDataset, batch_size: int, *, seed: int, workers: int = 0) -> None:
        self.dataset = dataset
        self.loader = make_loader(dataset, batch_size, shuffle=True, seed=seed, workers=workers,
                                  drop_last=len(dataset) > batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterable[tuple[Any, Any]]:
        self.dataset.set_epoch(epoch)
        return ((images, targets) for images, targets, _ in self.loader)


class SeededOrder:
    """A fixed list of ``(inputs, targets)`` steps, all visited every epoch in an order drawn from
    ``(seed, epoch)``: for models that take one whole sample (a slide) per step."""

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


def train_epoch(module: nn.Module, loss_of: LossFn, optimizer: Any, batches: Batches, epoch: int, epochs: int, *,
                device: str, report: Callable[..., None], min_batch: int = 2) -> float:
    """One epoch of optimiser steps; the mean training loss per item. Steps of fewer than
    ``min_batch`` items are skipped; a non-finite loss or weight raises :class:`TrainingDiverged`."""
    module.train()
    steps = len(batches)
    total, count = 0.0, 0
    for step, (inputs, targets) in enumerate(batches.epoch(epoch)):
        if len(targets) < min_batch:
            continue
        inputs, targets = to_device(inputs, device, True), to_device(targets, device, True)
        with autocast(device):
            loss = loss_of(inputs, targets)
        value = check_finite_loss(loss, epoch, step, steps, optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + value * len(targets), count + len(targets)
        report("train", epoch * steps + step + 1, epochs * steps, epoch=epoch + 1, loss=total / max(count, 1))
    check_finite_weights(module, epoch)
    return total / max(count, 1)


def fit(module: nn.Module, loss_of: LossFn, optimizer: Any, train: Union[PatchDataset, Batches],
        val: Union[PatchDataset, Batches, None], *, epochs: int, batch_size: int | None = None, device: str, seed: int,
        workers: int = 0, workdir: Path | None = None, progress: Callable[..., None] | None = None,
        select_best: bool = True, min_batch: int = 2) -> History:
    """Train for ``epochs``; keep the weights of the best validation epoch (``select_best``; the best
    training loss without validation) or of the last epoch. ``train`` is a PatchDataset (batched by
    ``batch_size``) or any :class:`Batches`; ``val`` (optional, either kind; a Batches' first epoch is the
    fixed validation set) is evaluated after every epoch.
    Writes ``history.json`` into ``workdir`` when one is given."""
    batched = isinstance(train, PatchDataset) or (isinstance(val, PatchDataset) and len(val) > 0)
    if batched and batch_size is None:
        raise TypeError("fit: batch_size is required to batch a PatchDataset")
    if isinstance(train, PatchDataset):
        train = PatchBatches(train, batch_size, seed=seed, workers=workers)
    val_loader = None
    if val is not None and len(val):
        val_loader = (make_loader(val, batch_size, shuffle=False, seed=seed, workers=workers)
                      if isinstance(val, PatchDataset) else list(val.epoch(0)))
    report = progress or (lambda *a, **k: None)
    history = History()
    best_loss, best_state = math.inf, None
    for epoch in range(epochs):
        record = {"epoch": epoch + 1, "train_loss": train_epoch(module, loss_of, optimizer, train, epoch, epochs,
                                                                  device=device, report=report, min_batch=min_batch)}
        if val_loader is not None:
            record["val_loss"] = evaluate(module, loss_of, val_loader, device, min_batch)
        history.epochs.append(record)
        if not select_best:  # the last epoch is kept: the weights are already in the module
            history.best_epoch = epoch + 1
            continue
        score = record.get("val_loss", record["train_loss"])
        if score < best_loss:
            best_loss, history.best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if best_state is not None:
        module.load_state_dict(best_state)
    if workdir is not None:
        write_text(Path(workdir) / "history.json", json.dumps(history.to_dict(), indent=1) + "\n")
    return history


@torch.no_grad()
def evaluate(module: nn.Module, loss_of: LossFn, loader: Any, device: str, min_batch: int = 2) -> float:
    """The mean loss per item over a loader's ``(inputs, targets, ...)`` batches, in eval mode."""
    module.eval()
    total, count = 0.0, 0
    for batch in loader:
        inputs, targets = batch[0], batch[1]
        if len(targets) < min_batch:
            continue
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        with autocast(device):
            total += float(loss_of(inputs, targets)) * len(targets)
        count += len(targets)
    return total / count if count else float("nan")
