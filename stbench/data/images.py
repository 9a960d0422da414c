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
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

#: Bump when the pixels a reader returns for the same file could change (part of the cache key).
READER_VERSION = "1"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: A single decoded TIFF strip/tile above this size is read once and kept in memory.
_WHOLE_CHUNK_BYTES = 256 * 1024 * 1024


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


class PILImageSource(ImageSource):
    """JPEG, PNG, ...: decoded once, on the first read, and kept."""

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path = path
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()
        with _unlimited_pixels():
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError)
                raise _fail(path, e) from None
        self.shape = (int(height), int(width))

    def _load(self) -> np.ndarray:
        from PIL import Image

        with self._lock:
            if self._array is None:
                with _unlimited_pixels():
                    try:
                        with Image.open(self.path) as im:
                            im.load()
                            self._array = self._to_array(im)
                    except DataError:
                        raise
                    except Exception as e:
                        raise _fail(self.path, e) from None
                self._array.flags.writeable = False
                if self._array.shape[:2] != self.shape:
                    raise _fail(self.path, f"decoded size {self._array.shape[:2]} != header size {self.shape}")
            return self._array

    def _to_array(self, im: Any) -> np.ndarray:
        mode = im.mode
        if mode.startswith("I;16"):
            a = np.asarray(im).astype(np.uint16)
        elif mode == "I":  # 16-bit grayscale PNGs open as 32-bit "I"
            a = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        elif mode == "F":
            a = np.asarray(im, dtype=np.float32)
        elif mode in ("RGB", "L"):
            a = np.asarray(im)
        else:  # RGBA (alpha dropped by convert), LA, P, CMYK, YCbCr, 1, ...
            a = np.asarray(im.convert("RGB"))
        return to_rgb(a, self.path)

    def _read_inside(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._load()[y0:y1, x0:x1]

    def close(self) -> None:
        self._array = None


class _unlimited_pixels:
    """Lift PIL's decompression-bomb limit for one open/decode, then restore it."""

    _lock = threading.RLock()

    def __enter__(self) -> None:
        from PIL import Image

        self._lock.acquire()
        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc: Any) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._saved
        self._lock.release()


# ---------------------------------------------------------------------------------------- TIFF


class TiffImageSource(ImageSource):
    """Level 0 of the largest TIFF series, read by window (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self._tf = None
        self._array: np.ndarray | None = None  # only for huge single-chunk compressed data
        self._lock = threading.Lock()
        try:
            self._tf = tifffile.TiffFile(path)
            self._setup()
        except DataError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise _fail(path, e) from None

    # -- set-up ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        tf = self._tf
        candidates = []
        for i, s in enumerate(tf.series):
            level = s.levels[0]
            axes = level.axes
            if "Y" in axes and "X" in axes:
                shp = dict(zip(axes, level.shape))
                candidates.append((shp["Y"] * shp["X"], -i, i, level))
        if not candidates:
            raise _fail(self.path, "no image series with Y and X axes")
        _, _, self._series, level = max(candidates, key=lambda t: t[:2])
        self._level = level
        axes, shape = level.axes, tuple(int(v) for v in level.shape)
        self._axes, self._full_shape = axes, shape
        dims = dict(zip(axes, shape))
        self.shape = (dims["Y"], dims["X"])
        photometric = int(getattr(level.keyframe, "photometric", 1))
        if photometric == 3:
            raise DataError(f"image {self.path} is a palette TIFF; convert it to RGB")
        if photometric == 5:
            raise DataError(f"image {self.path} is a CMYK TIFF; convert it to RGB")
        self._invert = photometric == 0  # MINISWHITE
        # channel axis: samples, then OME channels, then any other single axis of size 3 or 4
        chan = next((a for a in "SC" if a in dims and dims[a] > 1), None)
        if chan is None:
            others = [a for a in axes if a not in "YX" and dims[a] > 1]
            if len(others) == 1 and dims[others[0]] in (3, 4):
                chan = others[0]
        self._chan = chan
        self._check_not_truncated()
        if level.dataoffset is not None:  # uncompressed and contiguous in the file
            self._mode = "raw"
            self._dtype = np.dtype(level.dtype).newbyteorder(tf.byteorder)
            self._offset = int(level.dataoffset)
        else:
            import zarr

            self._mode = "zarr"
            self._zarr = zarr.open(tf.aszarr(series=self._series, level=0), mode="r")
            if tuple(self._zarr.shape) != shape:
                raise _fail(self.path, f"zarr shape {self._zarr.shape} != series shape {shape}")
            chunk_bytes = int(np.prod(self._zarr.chunks)) * np.dtype(self._zarr.dtype).itemsize
            if chunk_bytes > _WHOLE_CHUNK_BYTES:
                self._mode = "whole"

    def _check_not_truncated(self) -> None:
        size = os.path.getsize(self.path)
        level = self._level
        if level.dataoffset is not None:
            end = int(level.dataoffset) + int(np.prod(level.shape)) * np.dtype(level.dtype).itemsize
        else:
            end = 0
            for page in level.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                offs = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offs.size:
                    end = max(end, int((offs + counts).max()))
        if end > size:
            raise _fail(self.path, f"file is truncated ({size} bytes, image data runs to byte {end})")

    @property
    def windowed(self) -> bool:
        return self._mode in ("raw", "zarr")

    @property
    def chunk_rows(self) -> int:
        if self._mode == "zarr":
            return int(self._zarr.chunks[self._axes.index("Y")])
        return 1

    # -- reads ----------------------------------------------------------------------------------

    def _index(self, y0: int, y1: int, x0: int, x1: int) -> tuple:
        idx = []
        for a in self._axes:
            if a == "Y":
                idx.append(slice(y0, y1))
            elif a == "X":
                idx.append(slice(x0, x1))
            elif a == self._chan:
                idx.append(slice(None))
            else:
                idx.append(0)
        return tuple(idx)

    def _to_yxc(self, a: np.ndarray) -> np.ndarray:
        kept = [ax for ax in self._axes if ax in ("Y", "X") or ax == self._chan]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self._chan)] if self._chan else [])
        a = np.transpose(a, order)
        a = to_rgb(a, self.path)
        if self._invert:
            a = 255 - a
        return a

    def _read_inside(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            if self._mode == "raw":
                a = self._read_raw(y0, y1, x0, x1)
            elif self._mode == "zarr":
                a = np.asarray(self._zarr[self._index(y0, y1, x0, x1)])
            else:
                a = self._whole()[self._index(y0, y1, x0, x1)]
        except DataError:
            raise
        except Exception as e:
            raise _fail(self.path, e) from None
        return self._to_yxc(a)

    def _whole(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = np.asarray(self._zarr[...])
                self._array.flags.writeable = False
            return self._array

    def _read_raw(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read rows y0..y1 of a C-contiguous array stored at ``_offset``; one read per plane."""
        axes, shape, dt = self._axes, self._full_shape, self._dtype
        yi = axes.index("Y")
        if axes.index("X") != yi + 1:
            raise _fail(self.path, f"unsupported axis order {axes}")
        lead, trail = shape[:yi], shape[yi + 2:]
        row_items = shape[yi + 1] * int(np.prod(trail, dtype=np.int64))
        plane_items = shape[yi] * row_items
        # leading indices to read: all of the channel axis, index 0 of the others
        lead_ranges = [range(n) if a == self._chan else range(1) for a, n in zip(axes[:yi], lead)]
        lead_idx = np.array(np.meshgrid(*lead_ranges, indexing="ij")).reshape(len(lead), -1).T if lead else [()]
        lead_shape = tuple(len(r) for r in lead_ranges)
        out = np.empty((int(np.prod(lead_shape, dtype=np.int64)), y1 - y0, shape[yi + 1]) + trail, dtype=dt)
        nbytes = (y1 - y0) * row_items * dt.itemsize
        with self._lock:
            fh = self._tf.filehandle
            for k, li in enumerate(lead_idx):
                plane = int(np.ravel_multi_index(tuple(li), lead)) if lead else 0
                fh.seek(self._offset + (plane * plane_items + y0 * row_items) * dt.itemsize)
                got = fh.readinto(memoryview(out[k]).cast("B"))
                if got != nbytes:
                    raise _fail(self.path, f"short read ({got} of {nbytes} bytes): file is truncated")
        out = out.reshape(lead_shape + out.shape[1:])[(Ellipsis, slice(None), slice(x0, x1)) + (slice(None),) * len(trail)]
        # drop non-channel leading axes (size 1) and trailing non-channel axes at index 0
        idx = tuple(slice(None) if a == self._chan or a in "YX" else 0 for a in axes)
        out = out[idx]
        return out.astype(dt.newbyteorder("="), copy=False)

    def close(self) -> None:
        self._array = None
        if self._tf is not None:
            self._tf.close()
            self._tf = None


# ------------------------------------------------------------------------------------------ API


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open ``path`` for windowed reads: TIFF family by magic bytes, anything else through PIL."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror}; check the path or re-download it") from None
    if magic in _TIFF_MAGIC:
        return TiffImageSource(path)
    return PILImageSource(path)
