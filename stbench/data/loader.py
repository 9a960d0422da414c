"""Training loader over cached patches: uint8 tensors, paired augmentation, seeded.

Augmentation is the papers': random horizontal and vertical flips and a rotation by a multiple of 90
degrees, applied to uint8 arrays (no resampling, no interpolation). Each item's random draw depends
only on (seed, epoch, item index, view), so results do not depend on the number or kind of workers.

:func:`make_loader` builds whole batches at once (:meth:`PatchDataset.batch`: one gather per slide,
one copy per flip/rotation group) in worker *threads*: the copies release the GIL, and a batch never
crosses a process boundary (moving 25 MB batches between worker processes was the bottleneck on
small machines; see benchmarks/RESULTS.md). ``backend="processes"`` gives torch's DataLoader with
per-item worker processes instead.
"""
from __future__ import annotations

import multiprocessing
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
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
    return _dihedral(patch[None], int(hflip) + 2 * int(vflip) + 4 * k)[0]


class PatchDataset:
    """Items ``(images, expression, index)`` over the spots of several slides.

    ``images`` is a uint8 tensor (3, H, W), or (views, 3, H, W) with ``views=2`` (two independently
    augmented views, as image-centric contrastive training uses). ``expression`` is float32 (G,) or an empty tensor when the
    slides carry none. Call :meth:`set_epoch` before each epoch so the augmentation changes.
    ``memory_mb`` bounds the patches each process keeps in memory (0: always read from the cache).
    """

    def __init__(self, slides: Sequence[Any], *, augment: bool = True, views: int = 1, seed: int = 0,
                 rows: Sequence[int] | None = None, memory_mb: float = 1024) -> None:
        self.slides = list(slides)
        self.memory_mb = memory_mb
        self._in_memory: dict[int, np.ndarray] = {}
        self._memory_lock = threading.Lock()
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
        state = {**self.__dict__, "_in_memory": {}, "_memory_lock": None}
        if multiprocessing.context.get_spawning_popen() is None:  # a plain copy, not a worker start
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = multiprocessing.RawValue("q", state["_epoch"])
        state["_memory_lock"] = threading.Lock()
        self.__dict__.update(state)

    def _patch(self, s: int, row: int) -> np.ndarray:
        """One patch; a slide whose patches fit in this process's ``memory_mb`` budget is read whole
        on first use and served from memory afterwards (each worker keeps its own copy)."""
        whole = self._whole_slide(s)
        return whole[row] if whole is not None else np.asarray(self.slides[s].images[row], dtype=np.uint8)

    def _whole_slide(self, s: int) -> np.ndarray | None:
        cached = self._in_memory.get(s)
        if cached is not None:
            return cached
        with self._memory_lock:
            if s not in self._in_memory:
                images = self.slides[s].images
                size_mb = np.prod(images.shape, dtype=np.float64) / 2**20
                used_mb = sum(a.nbytes for a in self._in_memory.values()) / 2**20
                if used_mb + size_mb > self.memory_mb:
                    return None
                self._in_memory[s] = np.asarray(images, dtype=np.uint8)
            return self._in_memory[s]

    def _rows(self, s: int, rows: np.ndarray) -> np.ndarray:
        whole = self._whole_slide(s)
        if whole is not None:
            return whole[rows]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.slides[s].images.shape[1:]), dtype=np.uint8)
        out[order] = np.asarray(self.slides[s].images[rows[order]], dtype=np.uint8)
        return out

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


    def batch(self, indices: Sequence[int], device: Any = None) -> tuple[Any, Any, Any]:
        """Items ``indices`` collated: equal to stacking ``self[i]``, built a whole batch at a time. With
        ``device``, the un-augmented uint8 patches are moved there and flipped / turned there (the same
        values: flips and quarter turns are exact)."""
        import torch

        if device is not None:
            return self._batch_on(np.asarray(indices, dtype=np.int64), device)
        idx = np.asarray(indices, dtype=np.int64)
        slide_of, row_of = self.slide_of[idx], self.row_of[idx]
        shape = self.slides[0].images.shape[1:] if self.slides else (0, 0, 3)
        h, w, c = (int(v) for v in shape)
        images = np.empty((len(idx), self.views, c, h, w), dtype=np.uint8)
        first = self.slides[0].expression if self.slides else None
        expr = np.empty((len(idx), first.shape[1]), np.float32) if first is not None else None
        codes = self._codes(idx)
        for s in np.unique(slide_of):
            at = np.nonzero(slide_of == s)[0]
            patches = self._rows(int(s), row_of[at])
            if expr is not None:
                expr[at] = self.slides[s].expression[row_of[at]]
            for v in range(self.views):
                for code in np.unique(codes[at, v]):
                    sel = codes[at, v] == code
                    images[at[sel], v] = _dihedral(patches[sel], int(code)).transpose(0, 3, 1, 2)
        out = torch.from_numpy(images if self.views > 1 else images[:, 0])
        target = torch.from_numpy(expr) if expr is not None else torch.empty((len(idx), 0))
        return out, target, torch.from_numpy(idx)

    def _batch_on(self, idx: np.ndarray, device: Any) -> tuple[Any, Any, Any]:
        import torch

        slide_of, row_of = self.slide_of[idx], self.row_of[idx]
        shape = self.slides[0].images.shape[1:] if self.slides else (0, 0, 3)
        raw = np.empty((len(idx), *(int(v) for v in shape)), dtype=np.uint8)
        first = self.slides[0].expression if self.slides else None
        expr = np.empty((len(idx), first.shape[1]), np.float32) if first is not None else None
        for s in np.unique(slide_of):
            at = np.nonzero(slide_of == s)[0]
            raw[at] = self._rows(int(s), row_of[at])
            if expr is not None:
                expr[at] = self.slides[s].expression[row_of[at]]
        patches = torch.from_numpy(raw).to(device).permute(0, 3, 1, 2)
        codes = self._codes(idx)
        views = [dihedral_batch(patches, codes[:, v]) for v in range(self.views)]
        out = views[0] if self.views == 1 else torch.stack(views, 1)
        target = torch.from_numpy(expr) if expr is not None else torch.empty((len(idx), 0))
        return out, target, torch.from_numpy(idx)

    def _codes(self, idx: np.ndarray) -> np.ndarray:
        """(n, views) augmentation codes hflip + 2 vflip + 4 k (0 without augmentation)."""
        codes = np.zeros((len(idx), self.views), dtype=np.int64)
        if self.augment:
            epoch = self.epoch
            for j, i in enumerate(idx):
                for v in range(self.views):
                    hf, vf, k = augment_params(self.seed, epoch, int(i), v)
                    codes[j, v] = hf + 2 * vf + 4 * k
        return codes


def dihedral_batch(x: Any, codes: np.ndarray) -> Any:
    """A (N, C, H, W) tensor with item i flipped / turned by ``codes[i]`` (hflip + 2 vflip + 4 k, as
    :func:`_dihedral`), on the tensor's device; contiguous."""
    import torch

    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for code in np.unique(codes):
        sel = torch.from_numpy(np.nonzero(codes == code)[0]).to(x.device)
        out[sel] = augment(x.index_select(0, sel), bool(code & 1), bool(code & 2), int(code) >> 2)
    return out


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``n`` items that process ``rank`` of ``world`` takes:
    the shares are in rank order and differ in size by at most one item."""
    return rank * n // world, (rank + 1) * n // world


def _dihedral(batch: np.ndarray, code: int) -> np.ndarray:
    """:func:`augment` on an (N, H, W, C) batch, as a view."""
    if code & 1:
        batch = batch[:, :, ::-1]
    if code & 2:
        batch = batch[:, ::-1]
    k = code >> 2
    return np.rot90(batch, k, axes=(1, 2)) if k else batch


class BatchLoader:
    """Iterates ``(images, expression, index)`` batches of a :class:`PatchDataset`, built by
    ``workers`` threads ahead of the consumer (0: in the calling thread). The shuffle order is drawn
    exactly as torch's DataLoader draws it from a generator seeded with ``seed`` (one new order per
    pass), so training matches the per-item DataLoader batch for batch, whatever ``workers`` is.

    Process ``rank`` of ``world`` (data-parallel training) builds only its part of each pass: its
    contiguous share of every batch (:func:`shard_bounds`), or with ``whole`` every ``world``-th whole
    batch. ``device``: augment on that device (:meth:`PatchDataset.batch`)."""

    def __init__(self, dataset: PatchDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 workers: int = 0, drop_last: bool = False, prefetch: int = 2, rank: int = 0, world: int = 1,
                 whole: bool = False, device: Any = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.workers, self.drop_last, self.prefetch = max(0, workers), drop_last, max(1, prefetch)
        self.rank, self.world, self.whole, self.device = rank, world, whole, device
        import torch

        self._generator = torch.Generator()
        self._generator.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[np.ndarray]:
        import torch

        n = len(self.dataset)
        torch.empty((), dtype=torch.int64).random_(generator=self._generator)  # DataLoader's per-pass base seed
        order = np.arange(n)
        if self.shuffle:
            order = torch.randperm(n, generator=self._generator).numpy()
            torch.randperm(n, generator=self._generator)  # RandomSampler draws once more when exhausted
        return [order[i:i + self.batch_size] for i in range(0, len(self) * self.batch_size, self.batch_size)]

    def _pieces(self) -> list[tuple[np.ndarray, int, int]]:
        """This process's part of each batch of the pass: (indices, items in the whole batch, offset)."""
        batches = self._batches()
        if self.world == 1:
            return [(b, len(b), 0) for b in batches]
        if self.whole:
            return [(b, len(b), 0) for b in batches[self.rank::self.world]]
        return [(b[slice(*shard_bounds(len(b), self.rank, self.world))], len(b),
                 shard_bounds(len(b), self.rank, self.world)[0]) for b in batches]

    def __iter__(self) -> Any:
        return (batch for batch, _, _ in self.pieces())

    def pieces(self) -> Any:
        """``(batch, items in the whole batch, offset of this part in it)`` for each batch of one pass."""
        pieces = self._pieces()
        build = (lambda i: self.dataset.batch(i, self.device)) if self.device is not None else self.dataset.batch
        if self.workers == 0:
            for b, n, start in pieces:
                yield build(b), n, start
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="stbench-loader") as pool:
            ahead = self.workers * self.prefetch
            pending = [pool.submit(build, b) for b, _, _ in pieces[:ahead]]
            for i in range(len(pieces)):
                result = pending[i].result()
                if i + ahead < len(pieces):
                    pending.append(pool.submit(build, pieces[i + ahead][0]))
                pending[i] = None
                yield result, pieces[i][1], pieces[i][2]


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def make_loader(dataset: PatchDataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, backend: str = "threads", **shard: Any) -> Any:
    """Batches of ``dataset``: ``threads`` (default, :class:`BatchLoader`; ``shard``: its ``rank``,
    ``world``, ``whole`` and ``device``) or ``processes`` (torch DataLoader with per-item worker processes)."""
    if backend == "threads":
        return BatchLoader(dataset, batch_size, shuffle=shuffle, seed=seed, workers=workers, drop_last=drop_last,
                           **shard)
    if backend != "processes":
        raise ValueError(f"unknown loader backend '{backend}' (threads or processes)")
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        worker_init_fn=_worker_init if workers else None, persistent_workers=bool(workers),
        drop_last=drop_last, pin_memory=False,
    )
