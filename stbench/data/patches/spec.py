"""Naming of cached patch files: the patch spec (size, resampling), the file of a slide, the identity of a
spot table, and the side of the crop cut from the image."""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...errors import DataError

_SLIDE_KEY = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")


@dataclass(frozen=True)
class PatchSpec:
    """Patch side in pixels, and the pixel size to resample to (None: the slide's own)."""

    patch_px: int = 256
    target_um_per_px: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.patch_px, bool) or int(self.patch_px) != self.patch_px or self.patch_px < 1:
            raise DataError(f"patch_px must be a positive integer, got {self.patch_px!r}")
        object.__setattr__(self, "patch_px", int(self.patch_px))
        if self.target_um_per_px is not None:
            t = float(self.target_um_per_px)
            if not (math.isfinite(t) and t > 0):
                raise DataError(f"target_um_per_px must be a positive number or None, got {self.target_um_per_px!r}")
            object.__setattr__(self, "target_um_per_px", t)

    def key(self) -> str:
        """``"256px-native"`` or ``"224px-0.500um"``."""
        if self.target_um_per_px is None:
            return f"{self.patch_px}px-native"
        return f"{self.patch_px}px-{self.target_um_per_px:.3f}um"


def patch_file(root: str | os.PathLike, dataset_slide_key: str, spec: PatchSpec) -> Path:
    """``root/patches/<dataset_slide_key>/<spec.key()>.h5``; the key may contain ``/``."""
    key = str(dataset_slide_key)
    if not _SLIDE_KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise DataError(f"invalid slide key {key!r} for the patch cache; use letters, digits, '.', '_', '-' and '/'")
    return Path(root) / "patches" / key / f"{spec.key()}.h5"


def spots_sha256(barcodes: Iterable[Any], coords_xy: np.ndarray, grid: np.ndarray | None = None) -> str:
    """sha256 of the input spot table: one ``barcode<TAB>x<TAB>y[<TAB>gx<TAB>gy]`` line per spot,
    coordinates rounded to 0.01 px, lines joined by newlines."""
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    bcs = [str(b) for b in barcodes]
    g = None if grid is None else np.asarray(grid).reshape(-1, 2)
    lines = []
    for i, b in enumerate(bcs):
        x, y = coords[i]
        line = f"{b}\t{x:.2f}\t{y:.2f}"
        if g is not None:
            line += f"\t{int(g[i, 0])}\t{int(g[i, 1])}"
        lines.append(line)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def crop_side(spec: PatchSpec, *, image_scale: float = 1.0, source_um_per_px: float | None = None,
              image_path: str | os.PathLike = "") -> int:
    """Side of the square cut from the image (image pixels) before resizing to ``patch_px``.

    ``patch_px`` at native resolution, ``patch_px * target / source`` µm/px when resampling, times
    ``image_scale`` for a downsampled image; rounded once, half up, at least 1.
    """
    side = float(spec.patch_px)
    if spec.target_um_per_px is not None:
        if source_um_per_px is None or not (math.isfinite(float(source_um_per_px)) and float(source_um_per_px) > 0):
            raise DataError(
                f"cannot resample {image_path} to {spec.target_um_per_px} um/px: its pixel size is unknown; "
                "pass source_um_per_px or use native resolution (target_um_per_px=None)"
            )
        side *= spec.target_um_per_px / float(source_um_per_px)
    side *= float(image_scale)
    return max(1, int(math.floor(side + 0.5)))
