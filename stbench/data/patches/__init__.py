"""The HDF5 patch cache: one file per (slide, patch size, pixel size).

Layout: ``<cache_root()>/patches/<slide key>/<spec key>.h5``, for example
``~/.cache/stbench/patches/her2st_C/C2/256px-native.h5``. Each file holds

- ``images``: uint8 (N_kept, P, P, 3), chunked one patch per chunk ``(1, P, P, 3)``, uncompressed
  with a Fletcher-32 checksum per chunk;
- ``barcodes`` (utf-8 strings), ``coords`` (float64 (N_kept, 2) full-resolution x, y), ``grid``
  (int64 (N_kept, 2)), all in the input order of the kept spots; ``dropped_barcodes`` (utf-8) for
  the spots whose centre lies outside the image;
- attrs describing the source and the build (see :func:`build_patches`), ``complete = True``
  written last.

Design choices:

- **Bands, not whole images.** Spots are sorted by row and cut from a rolling band buffer that
  spans the columns the crops need: each band reads only the new rows (``BAND_BYTES`` / (3 x band
  width), rounded down to whole tile/strip rows, at least one) in pieces aligned to the tiles, and
  keeps the rows the next crops still need (less than one crop), so every tile is decoded once.
  Peak memory is the buffer, (crop + step + tile rows) x width x 3 bytes, plus one read piece,
  whatever the image's height, as long as the image can be read by window (tiled, stripped or
  uncompressed TIFF; see :mod:`stbench.data.images`). JPEG/PNG are decoded whole once. A window
  per spot would instead decode each tile once per spot that touches it (up to ~4 spots per tile
  at 256 px crops on 512 px tiles, more for dense Visium grids). Measured on a 20,000 x 20,000
  JPEG-tiled TIFF with 5,000 spots: 202 MB peak RSS (68 MB of it imports) against 1,681 MB for
  ``tifffile.imread`` + numpy crops (benchmarks/RESULTS.md).
- **No compression, Fletcher-32 checksums.** Real H&E patches barely compress losslessly (her2st
  C2, 187 patches of 256 px: 36.8 MB raw, 31.0 MB with gzip-1, 34.5 MB with lzf) while
  decompression dominates training reads (0.97 ms per patch with gzip-1, 0.42 with lzf, 0.10
  uncompressed with checksums). The checksums make a corrupted chunk fail loudly instead of
  serving wrong pixels.
- **Resizing.** A crop of side ``S != P`` (when resampling to ``target_um_per_px`` or when cutting
  from a downsampled image) is resized to ``P x P`` with PIL's bilinear filter, which Pillow
  widens by the scale factor when shrinking (a triangle/area-like antialiasing filter), so
  downsampling does not alias.
- **Atomic and locked.** A build writes a temporary file in the target folder and renames it
  (``stbench.atomic.atomic_path``): an interrupted build leaves no file at the target.
  ``FileLock(<file>.lock)`` serialises builders of the same file; :func:`ensure_patches` re-checks
  the file after taking the lock, so a second builder that waited reuses the first one's file.
"""
from __future__ import annotations

from ..locations import cache_root
from .build import BAND_BYTES, BLANK_RANGE, COMPRESSION, build_patches, ensure_patches
from .spec import PatchSpec, crop_side, patch_file, spots_sha256
from .store import (FORMAT_VERSION, H5Images, check_chunks, forget_verified, is_verified, mark_verified, open_patches,
                    source_changed, validate_patches)


def list_cache(root=None):
    """Cached patch files (see :func:`stbench.data.cache.list_patches`)."""
    from ..cache import list_patches

    return list_patches(root)


def verify_cache(root=None):
    """``(path, reason or None)`` for every cached patch file, every chunk read."""
    from ..cache import verify

    return [(path, reason) for _, path, reason in verify(root, ["patches"])]


def clear_cache(root=None, pattern: str = "*") -> int:
    """Delete cached patch files matching ``pattern`` (see :func:`stbench.data.cache.clear`)."""
    from ..cache import clear

    return clear(root, pattern, ["patches"])


__all__ = ["BAND_BYTES", "BLANK_RANGE", "COMPRESSION", "FORMAT_VERSION", "H5Images", "PatchSpec", "build_patches",
           "cache_root", "check_chunks", "clear_cache", "crop_side", "ensure_patches", "forget_verified",
           "is_verified", "list_cache", "mark_verified", "open_patches", "patch_file", "source_changed",
           "spots_sha256", "validate_patches", "verify_cache"]
