"""Training loader over cached patches: uint8 tensors, paired augmentation, worker processes, seeded.

Augmentation is the papers': random horizontal and vertical flips and a rotation by a multiple of 90
degrees, applied to uint8 tensors (no resampling, no interpolation). Each item's random draw depends
only on (seed, epoch, item index, view), so results do not depend on the number of workers.
"""
from __future__ import annotations

import multiprocessing
import zlib
from typing import Any, Sequence

import numpy as np


def augment_params(seed: int, epoch: int, index: int, view: int) -> tuple[bool, bool, int]:
    rng = np.random.default_rng([seed, epoch, index, view, zlib.crc32(b"augment")])
    hflip, vflip, k = rng.integers(0, 2), rng.integers(0, 2), rng.integers(0, 4)
    return bool(hflip), bool(vflip), int(k)


def augment(patch: Any, hflip: bool, vflip: bool, k: int) -> Any:
    """Apply flips then ``k`` quarter turns to an (..., H, W) tensor or (H, W, C) array."""
    import torch

    if isinstance(patch, torch.Tensor):
        h, w = patch.dim() - 2, patch.dim() - 1
        if hflip:
            patch = torch.flip(patch, dims=(w,))
        if vflip:
            patch = torch.flip(patch, dims=(h,))
        return torch.rot90(patch, k, dims=(h, w)) if k else patch
    if hflip:
        patch = patch[:, ::-1]
    if vflip:
        patch = patch[::-1]
    return np.rot90(patch, k, axes=(0, 1)) if k else patch


class PatchDataset:
    """Items ``(images, expression, index)`` over the spots of several slides.

    ``images`` is a uint8 tensor (3, H, W), or (views, 3, H, W) with ``views=2`` (two independently
    augmented views, as HECLIP trains). ``expression`` is float32 (G,) or an empty tensor when the
    slides carry none. Call :meth:`set_epoch` before each epoch so the augmentation changes.
    ``memory_mb`` bounds the patches each process keeps in memory (0: always read from the cache).
    """

    def __init__(self, slides: Sequence[Any], *, augment: bool = True, views: int = 1, seed: int = 0,
                 rows: Sequence[int] | None = None, memory_mb: float = 1024) -> None:
        self.slides = list(slides)
        self.memory_mb = memory_mb
        self._in_memory: dict[int, np.ndarray] = {}
        self.augment, self.views, self.seed = augment, views, seed
        self._epoch = multiprocessing.RawValue("q", 0)  # shared with (persistent) worker processes
        sizes = [len(s) for s in self.slides]
        self.slide_of = np.repeat(np.arange(len(sizes)), sizes)
        self.row_of = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, np.int64)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            self.slide_of, self.row_of = self.slide_of[rows], self.row_of[rows]

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw; seen by worker processes too, even persistent ones."""
        self._epoch.value = epoch

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_in_memory": {}}
        if multiprocessing.context.get_spawning_popen() is None:  # a plain copy, not a worker start
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = multiprocessing.RawValue("q", state["_epoch"])
        self.__dict__.update(state)

    def _patch(self, s: int, row: int) -> np.ndarray:
        """One patch; a slide whose patches fit in this process's ``memory_mb`` budget is read whole
        on first use and served from memory afterwards (each worker keeps its own copy)."""
        cached = self._in_memory.get(s)
        if cached is not None:
            return cached[row]
        images = self.slides[s].images
        size_mb = np.prod(images.shape, dtype=np.float64) / 2**20
        used_mb = sum(a.nbytes for a in self._in_memory.values()) / 2**20
        if used_mb + size_mb <= self.memory_mb:
            self._in_memory[s] = np.asarray(images, dtype=np.uint8)
            return self._in_memory[s][row]
        return np.asarray(images[row], dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.slide_of)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        import torch

        slide = self.slides[self.slide_of[i]]
        row = int(self.row_of[i])
        patch = self._patch(int(self.slide_of[i]), row)
        out = []
        for v in range(self.views):
            p = augment(patch, *augment_params(self.seed, self.epoch, i, v)) if self.augment else patch
            out.append(torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1))))
        images = out[0] if self.views == 1 else torch.stack(out)
        expr = slide.expression
        target = torch.tensor(expr[row], dtype=torch.float32) if expr is not None else torch.empty(0)
        return images, target, i


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def make_loader(dataset: PatchDataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False) -> Any:
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        worker_init_fn=_worker_init if workers else None, persistent_workers=bool(workers),
        drop_last=drop_last, pin_memory=False,
    )
