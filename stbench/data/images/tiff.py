"""TIFF / BigTIFF / OME-TIFF: windowed reads of tiled, stripped or uncompressed level-0 data."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ...errors import DataError
from . import ImageSource, _fail, to_rgb

#: A single decoded TIFF strip/tile above this size is read once and kept in memory.
_WHOLE_CHUNK_BYTES = 256 * 1024 * 1024


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
