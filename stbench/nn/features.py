"""Frozen-encoder features and their cache: computed once per (patch file, encoder, weights, input
handling, view) and read back by every later fold, run and model on the same encoder.

An encoder is any timm name (ImageNet weights from the hub, or from an installed weights package such
as EfficientNet-Lite0's, which works offline), a local weights file (``weights=PATH``) or a Hugging Face
hub name (``hf-hub:org/name``: pathology foundation models such as UNI, CONCH, H-optimus or Phikon when
the user has access). Its input size and normalisation come from timm's pretrained configuration of the
model (``timm.data.resolve_model_data_config``) unless given: the patch is centre-cropped (``crop``),
resized to the input size (bilinear, antialiased) and normalised with the encoder's mean and std.

Cache layout: ``<cache>/features/<encoder slug>/<key>.h5`` with ``features`` (N, D) float32 (Fletcher-32
checksums) and the key's inputs in the attributes; written atomically under ``<file>.lock``, read back in
full (a damaged file is recomputed with a warning), listed, verified and cleared by ``stbench cache``.
The key covers the patch file's identity (path, size, modification time), the encoder name, the weights
file's identity, the input size, crop, mean and std, and the view: one of the 8 flips/quarter turns
(``view`` code hflip + 2 vflip + 4 k, as :func:`stbench.data.loader.augment`), so augmented training can
use cached views.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import StbenchError

log = logging.getLogger("stbench")
FORMAT_VERSION = 1
Progress = Callable[..., None]


@dataclass
class FrozenEncoder:
    """A pretrained encoder used as a fixed feature extractor (built on first use)."""

    name: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    input_px: int | None = None
    crop: int | None = None
    device: str = "cpu"
    batch_size: int = 64
    _module: Any = field(default=None, repr=False)
    _config: dict[str, Any] | None = field(default=None, repr=False)

    def config(self) -> dict[str, Any]:
        """Input size and normalisation: the options given, else the encoder's pretrained configuration."""
        if self._config is None:
            cfg = _data_config(self.name)
            size = self.input_px or int(cfg["input_size"][-1])
            self._config = {"input_px": size, "crop": self.crop, "mean": [float(v) for v in cfg["mean"]],
                            "std": [float(v) for v in cfg["std"]]}
        return self._config

    def identity(self) -> dict[str, Any]:
        """What the features depend on besides the patches (part of the cache key)."""
        weights = None
        if self.weights:
            p = Path(self.weights)
            weights = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else self.weights
        return {"encoder": self.name, "pretrained": self.pretrained, "weights": weights, **self.config(),
                "format": FORMAT_VERSION}

    def module(self) -> Any:
        if self._module is None:
            from .encoder import create_encoder

            self._module = create_encoder(self.name, self.pretrained, self.weights).to(self.device).eval()
        return self._module

    def encode(self, images: np.ndarray, view: int = 0) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, D) float32 features of the given dihedral view."""
        import torch

        from ..data.loader import augment
        from .inputs import centre_crop, resize

        cfg = self.config()
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = augment(x, bool(view & 1), bool(view & 2), view >> 2)
        x = resize(centre_crop(x, cfg["crop"]).float() / 255.0, cfg["input_px"])
        mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            out = self.module()(((x - mean) / std).to(self.device))
        return out.float().cpu().numpy()


def _data_config(name: str) -> dict[str, Any]:
    import timm

    if name.startswith("hf-hub:"):
        from .encoder import hub_reachable

        reachable, host = hub_reachable()
        if not reachable:
            raise StbenchError(f"encoder '{name}' lives on the Hugging Face hub ({host}), which cannot be reached; "
                               f"connect (and log in if the model is gated), or pass a timm name with -o weights=PATH")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as e:
        raise StbenchError(f"unknown encoder '{name}' ({type(e).__name__}); use a timm model name "
                           f"(timm.list_models()) or hf-hub:org/name") from None
    return timm.data.resolve_model_data_config(model)


def _source_identity(images: Any) -> tuple[Any, np.ndarray | None, Any]:
    """(identity of the images' storage, the row index into it or None, the storage to encode)."""
    from ..data.patches import H5Images
    from ..slide import ImagesView

    index = None
    if isinstance(images, ImagesView):
        images, index = images.images, images.index
    if isinstance(images, H5Images):
        p = Path(images.path)
        st = p.stat()
        return ["patch-file", str(p.resolve()), st.st_size, st.st_mtime_ns], index, images
    arr = np.ascontiguousarray(np.asarray(images))
    return ["array", hashlib.sha256(arr.tobytes()).hexdigest(), list(arr.shape)], index, arr


def feature_path(encoder: FrozenEncoder, source: Any, view: int) -> Path:
    from ..data.locations import cache_dir

    key = hashlib.sha256(json.dumps({"source": source, "view": view, **encoder.identity()}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder.name).strip("-") or "encoder"
    return cache_dir("features", slug) / f"{key}.h5"


def features_of(images: Any, encoder: FrozenEncoder, view: int = 0, progress: Progress | None = None,
                task: str = "features") -> np.ndarray:
    """(N, D) features of a slide's patches (an array, an ``H5Images`` or a view of one), from the cache
    when there, else computed in batches and cached."""
    source, index, storage = _source_identity(images)
    path = feature_path(encoder, source, view)
    feats = _read(path)
    if feats is None:
        feats = _compute_and_store(path, storage, encoder, view, source, progress, task)
    return feats if index is None else feats[index]


def _read(path: Path) -> np.ndarray | None:
    import h5py

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise OSError("incomplete")
            return np.asarray(f["features"][()], dtype=np.float32)
    except Exception as e:  # h5py raises OSError, KeyError, ValueError for damaged files
        log.warning("recomputing %s: unreadable feature cache (%s)", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def _compute_and_store(path: Path, storage: Any, encoder: FrozenEncoder, view: int, source: Any,
                       progress: Progress | None, task: str) -> np.ndarray:
    import h5py
    from filelock import FileLock

    from ..atomic import atomic_path

    with FileLock(str(path) + ".lock"):
        cached = _read(path)  # another process may have finished while we waited
        if cached is not None:
            return cached
        n = len(storage)
        feats = np.zeros((0, 0), np.float32)
        for start in range(0, n, encoder.batch_size):
            part = encoder.encode(np.asarray(storage[start:start + encoder.batch_size]), view)
            if start == 0:  # one (N, D) array filled in place: no list of parts and no concatenated copy
                feats = np.empty((n, part.shape[1]), np.float32)
            feats[start:start + len(part)] = part
            if progress is not None:
                progress(task, min(n, start + encoder.batch_size), n, view=view)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats, fletcher32=True)
            f.attrs["key"] = json.dumps({"source": source, "view": view, **encoder.identity()}, default=str)
            f.attrs["complete"] = True
    return feats


def canonical_view(code: int) -> int:
    """The smallest augmentation code (hflip + 2 vflip + 4 k, k = 0..3) giving the same image as ``code``:
    16 codes, 8 distinct flips/quarter turns (the dihedral group of the square)."""
    return _CANONICAL[int(code)]


def _canonical_codes() -> dict[int, int]:
    probe = np.arange(9).reshape(3, 3, 1)  # distinct values: every symmetry moves it differently
    seen: dict[bytes, int] = {}
    out = {}
    for code in range(16):
        x = probe
        x = x[:, ::-1] if code & 1 else x
        x = x[::-1] if code & 2 else x
        x = np.rot90(x, code >> 2, axes=(0, 1))
        out[code] = seen.setdefault(np.ascontiguousarray(x).tobytes(), code)
    return out


_CANONICAL = _canonical_codes()
#: The 8 distinct views, as codes for :meth:`FrozenEncoder.encode`.
DIHEDRAL_VIEWS = tuple(sorted(set(_CANONICAL.values())))


def slide_views(slides: Any, encoder: FrozenEncoder, views: Any, progress: Progress | None = None) -> np.ndarray:
    """(len(views), N, D) features of the concatenated slides, one block per dihedral view code."""
    return np.stack([np.concatenate([features_of(s.images, encoder, view=v, progress=progress,
                                                 task=f"features {s.slide_id} view {v}") for s in slides])
                     for v in views])


class FeatureBatches:
    """Training steps over cached features: shuffled mini-batches of ``rows`` (drawn as torch's DataLoader
    draws them from ``seed``), each item's view chosen per epoch by the same seeded draw as patch
    augmentation (:func:`stbench.data.loader.augment_params`), so training on cached views is training
    on augmented patches. ``features`` is (V, N, D) over view codes ``views``; targets are (N, G)."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, rows: np.ndarray, batch_size: int, *, seed: int,
                 views: Any = (0,), augment: bool = False, shuffle: bool = True) -> None:
        import torch

        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.rows, self.batch_size, self.seed = np.asarray(rows, dtype=np.int64), batch_size, seed
        self.slot = {int(v): i for i, v in enumerate(views)}
        self.augment, self.shuffle = augment, shuffle
        self.drop_last = shuffle and len(self.rows) > batch_size
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _view(self, epoch: int, position: int) -> int:
        from ..data.loader import augment_params

        if not self.augment:
            return 0
        hflip, vflip, k = augment_params(self.seed, epoch, position, 0)
        return self.slot[canonical_view(int(hflip) + 2 * int(vflip) + 4 * k)]

    def epoch(self, epoch: int) -> Any:
        import torch

        order = (torch.randperm(len(self.rows), generator=self._generator).numpy() if self.shuffle
                 else np.arange(len(self.rows)))
        for b in range(len(self)):
            positions = order[b * self.batch_size:(b + 1) * self.batch_size]
            rows = self.rows[positions]
            slots = torch.tensor([self._view(epoch, int(p)) for p in positions])
            yield self.features[slots, torch.from_numpy(rows)], self.targets[torch.from_numpy(rows)]
