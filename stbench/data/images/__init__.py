"""Windowed reads of whole-slide H&E images: ``open_image(path).read(y0, y1, x0, x1)``.

``open_image`` returns an :class:`ImageSource` with ``.shape -> (height, width)`` of the
full-resolution image and ``.read(y0, y1, x0, x1) -> uint8 (y1 - y0, x1 - x0, 3)`` RGB. Any part
of the window outside the image is white (255), so a caller can ask for a crop that crosses the
border and get a full-size array.

Formats and memory:

- **TIFF / BigTIFF / OME-TIFF / SVS-like** (recognised by the file's magic bytes, not its name):
  the largest series (by pixel count of its level 0) and its level 0 (full resolution of a
  pyramid) are read.

  * Tiled or stripped data is read through ``TiffFile.aszarr()`` + ``zarr.open``: only the tiles
    or strips that the window touches are decoded, so memory is bounded by the window plus a few
    decoded chunks.
  * Uncompressed data stored contiguously (for example tifffile's default single-strip output)
    would be one huge chunk for zarr, so it is read directly from the file instead: the rows of
    the window are read with one ``readinto`` per channel plane (no memory map, so the resident
    set does not grow with the pages touched).
  * A compressed TIFF whose single strip or tile is larger than ``_WHOLE_CHUNK_BYTES`` cannot be
    read by window; it is decoded once on the first read and kept (like JPEG/PNG below).

  Layouts: interleaved RGB (``YXS``), RGBA (alpha dropped), grayscale (stacked to three
  channels), gray + alpha, and channel-first planes (``SYX``/``CYX``, or a leading page axis of
  size 3 or 4). Other axes (time, z, ...) are read at index 0.
- **JPEG / PNG / other formats PIL opens**: they cannot be read by window, so the whole image is
  decoded on the first ``read`` (``PIL.Image.MAX_IMAGE_PIXELS`` is lifted only while this reader
  opens and decodes the file) and kept for the reader's lifetime. Bounded memory applies to tiled
  or stripped (or uncompressed) TIFF only. EXIF orientation is *not* applied: spot coordinates
  refer to the stored pixel grid.

Sample types: uint8 is used as is; other unsigned integers (uint16 in particular) are scaled by
the dtype's maximum, ``round(v * 255 / 65535)`` for uint16 (a 12-bit image stored as uint16 will
therefore look dark: its values only reach 4095); bool maps to 0/255; floats are taken to be in
[0, 1] and clipped. Signed integers, palette and CMYK TIFFs raise :class:`DataError`.

An unreadable or truncated image raises :class:`DataError` ("cannot read image X: ...;
re-download it"), at open time where the damage is visible then (TIFF segment offsets past the
end of the file) and otherwise at the first read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError

#: Bump when the pixels a reader returns for the same file could change (part of the cache key).
READER_VERSION = "1"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _fail(path: Path | str, why: object) -> DataError:
    text = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
    return DataError(f"cannot read image {path}: {text}; re-download it")


def to_uint8(a: np.ndarray, path: Path | str = "") -> np.ndarray:
    """Convert samples to uint8: unsigned ints scaled by their dtype maximum, floats from [0, 1]."""
    dt = a.dtype
    if dt == np.uint8:
        return a
    if dt == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if dt.kind == "u":
        scale = np.float32(255.0 / np.iinfo(dt).max)
        return np.rint(a.astype(np.float32) * scale).astype(np.uint8)
    if dt.kind == "f":
        return np.rint(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise DataError(f"image {path} has {dt} samples; expected unsigned integers or floats, convert it to 8-bit RGB")


def to_rgb(a: np.ndarray, path: Path | str = "") -> np.ndarray:
    """(H, W), (H, W, 1..4) -> (H, W, 3) uint8: gray stacked, alpha dropped."""
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    if c in (1, 2):  # gray, gray + alpha
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif c in (3, 4):
        a = a[:, :, :3]
    else:
        raise DataError(f"image {path} has {c} channels; expected RGB, RGBA or grayscale H&E")
    return np.ascontiguousarray(to_uint8(a, path))


class ImageSource:
    """An open image: ``shape`` (height, width) and ``read`` of white-padded RGB windows."""

    path: Path
    shape: tuple[int, int]

    def _read_inside(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) uint8 for a window fully inside the image (non-empty)."""
        raise NotImplementedError

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """RGB uint8 (y1 - y0, x1 - x0, 3) of rows y0..y1-1, columns x0..x1-1; outside is white."""
        y0, y1, x0, x1 = (int(v) for v in (y0, y1, x0, x1))
        if y1 < y0 or x1 < x0:
            raise ValueError(f"empty or reversed window y {y0}:{y1}, x {x0}:{x1}")
        h, w = self.shape
        iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if (iy0, iy1, ix0, ix1) == (y0, y1, x0, x1) and y1 > y0 and x1 > x0:
            a = self._read_inside(y0, y1, x0, x1)  # fully inside: no padded copy
            return a if a.flags.writeable else a.copy()  # never hand out a cached array
        out = np.full((y1 - y0, x1 - x0, 3), 255, dtype=np.uint8)
        if iy0 < iy1 and ix0 < ix1:
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = self._read_inside(iy0, iy1, ix0, ix1)
        return out

    @property
    def chunk_rows(self) -> int:
        """Rows per decoded unit (tile or strip height); reads aligned to it decode each once."""
        return 1

    @property
    def windowed(self) -> bool:
        """True when reads decode only what a window touches (bounded memory)."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shape={self.shape})"


# ----------------------------------------------------------------------------------------- PIL


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open ``path`` for windowed reads: TIFF family by magic bytes, anything else through PIL."""
    from .pil import PILImageSource
    from .tiff import TiffImageSource

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror}; check the path or re-download it") from None
    if magic in _TIFF_MAGIC:
        return TiffImageSource(path)
    return PILImageSource(path)


def __getattr__(name: str) -> Any:
    """The concrete sources, imported on first use."""
    if name in ("PILImageSource", "_unlimited_pixels"):
        from . import pil

        return getattr(pil, name)
    if name == "TiffImageSource":
        from .tiff import TiffImageSource

        return TiffImageSource
    raise AttributeError(name)
