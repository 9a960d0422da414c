"""One training loop for every patch model: epochs, best-validation checkpoint, loss history.

The caller supplies ``loss_of(batch_images_uint8, targets) -> scalar loss`` and the optimiser; the
loop handles devices (bf16 autocast and channels_last on CUDA), seeding, progress, validation and
checkpointing (safetensors + JSON, reloaded with no unpickling).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_text
from ..errors import StbenchError
from ..loader import PatchDataset, make_loader


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


def fit(module: nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer: Any,
        train: PatchDataset, val: PatchDataset | None, *, epochs: int, batch_size: int, device: str, seed: int,
        workers: int = 0, workdir: Path | None = None, progress: Callable[..., None] | None = None,
        select_best: bool = True, min_batch: int = 2) -> History:
    """Train for ``epochs``; keep the weights of the best validation epoch (or the last one)."""
    history = History()
    best_loss, best_state = math.inf, None
    train_loader = make_loader(train, batch_size, shuffle=True, seed=seed, workers=workers, drop_last=len(train) > batch_size)
    val_loader = make_loader(val, batch_size, shuffle=False, seed=seed, workers=workers) if val is not None and len(val) else None
    steps = len(train_loader)
    report = progress or (lambda *a, **k: None)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        module.train()
        total, count = 0.0, 0
        for step, (images, targets, _) in enumerate(train_loader):
            if len(images) < min_batch:
                continue
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(device):
                loss = loss_of(images, targets)
            value = check_finite_loss(loss, epoch, step, steps, optimizer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + value * len(images), count + len(images)
            report("train", epoch * steps + step + 1, epochs * steps, epoch=epoch + 1, loss=total / max(count, 1))
        check_finite_weights(module, epoch)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if val_loader is not None:
            record["val_loss"] = evaluate(module, loss_of, val_loader, device, min_batch)
        history.epochs.append(record)
        score = record.get("val_loss", record["train_loss"]) if select_best else -epoch
        if score < best_loss:
            best_loss, history.best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if best_state is not None:
        module.load_state_dict(best_state)
    if workdir is not None:
        write_text(Path(workdir) / "history.json", json.dumps(history.to_dict(), indent=1) + "\n")
    return history


@torch.no_grad()
def evaluate(module: nn.Module, loss_of: Callable, loader: Any, device: str, min_batch: int = 2) -> float:
    module.eval()
    total, count = 0.0, 0
    for images, targets, _ in loader:
        if len(images) < min_batch:
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast(device):
            total += float(loss_of(images, targets)) * len(images)
        count += len(images)
    return total / count if count else float("nan")
