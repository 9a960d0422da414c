"""JPEG, PNG and the other formats PIL opens: decoded whole on the first read and kept."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from . import ImageSource, _fail, to_rgb


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
