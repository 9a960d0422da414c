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

import hashlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ...atomic import atomic_path
from ...errors import DataError
from ..images import READER_VERSION as IMAGE_READER_VERSION
from ..images import open_image
from ..locations import cache_root  # noqa: F401  (re-exported: older plugins import it from here)

log = logging.getLogger("stbench")

FORMAT_VERSION = 2
#: A patch is blank when every pixel value lies within this many levels of one value (no tissue).
BLANK_RANGE = 2
#: Bytes of patches read at once when every chunk is verified.
VERIFY_BYTES = 64 * 1024 * 1024
COMPRESSION = None
#: New rows read per band: BAND_BYTES // (3 * band width), rounded down to whole tile/strip rows.
BAND_BYTES = 32 * 1024 * 1024

_DATASETS = ("images", "barcodes", "coords", "grid")
_SLIDE_KEY = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")

Progress = Callable[..., None]


# ------------------------------------------------------------------------------------ locations


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


# ------------------------------------------------------------------------------------- building


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


def _source_stat(image_path: Path) -> os.stat_result:
    try:
        return image_path.stat()
    except OSError as e:
        raise DataError(f"cannot read image {image_path}: {e.strerror}; check the path or re-download it") from None


def _expected_attrs(image_path: Path, coords_xy: np.ndarray, barcodes: np.ndarray, grid: np.ndarray,
                    spec: PatchSpec, image_scale: float, source_um_per_px: float | None,
                    source_sha256: str | None, reader_version: str) -> dict[str, Any]:
    st = _source_stat(image_path)
    exp: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "patch_px": spec.patch_px,
        "target_um_per_px": spec.target_um_per_px,
        "image_scale": float(image_scale),
        "barcodes_sha256": spots_sha256(barcodes, coords_xy, grid),
        "reader_version": str(reader_version),
        "image_reader_version": IMAGE_READER_VERSION,
        "source_size": int(st.st_size),
    }
    if spec.target_um_per_px is not None:
        exp["source_um_per_px"] = float(source_um_per_px) if source_um_per_px is not None else None
    if source_sha256:
        exp["source_sha256"] = str(source_sha256)
    else:
        exp["source_mtime"] = float(st.st_mtime)
    return exp


def _check_inputs(coords_xy: Any, barcodes: Any, grid: Any, image_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords = np.asarray(coords_xy, dtype=np.float64)
    bcs = np.asarray(barcodes).astype(str)
    g = np.asarray(grid)
    n = len(bcs)
    if bcs.ndim != 1 or coords.shape != (n, 2) or g.shape != (n, 2):
        raise DataError(
            f"patches for {image_path}: barcodes {bcs.shape}, coords {coords.shape} and grid {g.shape} "
            f"must be (N,), (N, 2), (N, 2)"
        )
    if n == 0:
        raise DataError(f"patches for {image_path}: the spot table is empty; check the spot file")
    return coords, bcs, g.astype(np.int64)


def build_patches(image_path: str | os.PathLike, coords_xy: Any, barcodes: Any, grid: Any,
                  out: str | os.PathLike, spec: PatchSpec = PatchSpec(), *, image_scale: float = 1.0,
                  source_um_per_px: float | None = None, source_sha256: str | None = None,
                  reader_version: str = "", progress: Progress | None = None) -> Path:
    """Cut one patch per spot from ``image_path`` and write them to ``out`` (always rebuilds).

    ``coords_xy`` are full-resolution pixel centres (x, y); they are multiplied by ``image_scale``
    to address ``image_path`` (1.0 for the full-resolution image, ``tissue_hires_scalef`` for a
    hires PNG). Each patch is the ``S x S`` crop (see :func:`crop_side`) whose top-left corner is
    ``round(centre) - S // 2``, resized to ``patch_px`` when ``S != patch_px``. Crops crossing the
    border are padded white (``n_padded``); spots whose rounded centre is outside the image are
    dropped (``n_dropped``, their barcodes in ``dropped_barcodes``); all outside -> DataError.

    attrs: ``format_version``, ``source_path``, ``source_sha256`` (if given), ``source_size``,
    ``source_mtime``, ``reader_version``, ``image_reader_version``, ``patch_px``,
    ``target_um_per_px`` and ``source_um_per_px`` (NaN for None), ``image_scale``, ``crop_px``,
    ``image_height``, ``image_width``, ``n_spots_in``, ``n_kept``, ``n_padded``, ``n_dropped``,
    ``barcodes_sha256`` (:func:`spots_sha256` of the input table), ``compression``, ``band_bytes``,
    ``created``, and ``complete = True`` last. Holds ``<out>.lock`` while writing.
    """
    from filelock import FileLock

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        return _build(Path(image_path), coords_xy, barcodes, grid, out, spec, image_scale=image_scale,
                      source_um_per_px=source_um_per_px, source_sha256=source_sha256,
                      reader_version=reader_version, progress=progress)


def ensure_patches(image_path: str | os.PathLike, coords_xy: Any, barcodes: Any, grid: Any,
                   out: str | os.PathLike, spec: PatchSpec = PatchSpec(), *, image_scale: float = 1.0,
                   source_um_per_px: float | None = None, source_sha256: str | None = None,
                   reader_version: str = "", progress: Progress | None = None) -> Path:
    """Reuse ``out`` if it validates against these inputs, else (re)build it under the lock.

    A file that fails validation is never used: the reason is logged as a warning
    ("rebuilding <file>: <reason>"), the file is deleted and rebuilt.
    """
    from filelock import FileLock

    image_path, out = Path(image_path), Path(out)
    coords, bcs, g = _check_inputs(coords_xy, barcodes, grid, image_path)
    expected = _expected_attrs(image_path, coords, bcs, g, spec, image_scale, source_um_per_px,
                               source_sha256, reader_version)
    if out.exists() and _usable(out, expected) is None:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write the patch cache in {out.parent} ({e.strerror}); set STBENCH_CACHE to a writable folder") from None
    with FileLock(str(out) + ".lock"):
        if out.exists():  # another builder may have finished while we waited
            reason = _usable(out, expected)
            if reason is None:
                return out
            log.warning("rebuilding %s: %s", out, reason)
            out.unlink()
        else:
            log.info("building %s", out)
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):  # builders hold the lock: these are a killed build's
            tmp.unlink(missing_ok=True)
        return _build(image_path, coords, bcs, g, out, spec, image_scale=image_scale,
                      source_um_per_px=source_um_per_px, source_sha256=source_sha256,
                      reader_version=reader_version, progress=progress)


def _usable(path: Path, expected: dict[str, Any]) -> str | None:
    """None when ``path`` matches ``expected`` and every chunk passed its checksum since the file last
    changed (a stamp beside it records the verified size, mtime and inode), else why not."""
    reason = validate_patches(path, expected)
    if reason is None and not is_verified(path):
        reason = check_chunks(path)
        if reason is None:
            mark_verified(path)
    return reason


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def is_verified(path: Path) -> bool:
    import json

    try:
        return json.loads(_stamp(path).read_text()) == _identity(path)
    except (OSError, ValueError):
        return False


def mark_verified(path: Path) -> None:
    import json

    from ...atomic import write_text

    write_text(_stamp(path), json.dumps(_identity(path)))


def forget_verified(path: Path) -> None:
    _stamp(path).unlink(missing_ok=True)


def check_chunks(path: str | os.PathLike) -> str | None:
    """Read every patch (each chunk's Fletcher-32 checksum is checked on read); None when all pass,
    else which patch failed."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            images = f["images"]
            n = images.shape[0]
            block = max(1, VERIFY_BYTES // max(1, int(np.prod(images.shape[1:]))))
            for start in range(0, n, block):
                try:
                    images[start:start + block]
                except OSError:
                    for i in range(start, min(n, start + block)):
                        try:
                            images[i]
                        except OSError as e:
                            return f"damaged: patch {i} fails its checksum ({_first_line(e)})"
            for name in ("barcodes", "coords", "grid"):
                f[name][()]
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError for damaged files
        return f"unreadable: {_first_line(e)}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _resize(crop: np.ndarray, p: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((p, p), resample=Image.BILINEAR))


def _build(image_path: Path, coords_xy: Any, barcodes: Any, grid: Any, out: Path, spec: PatchSpec, *,
           image_scale: float, source_um_per_px: float | None, source_sha256: str | None,
           reader_version: str, progress: Progress | None) -> Path:
    import h5py

    t0 = time.perf_counter()
    coords, bcs, g = _check_inputs(coords_xy, barcodes, grid, image_path)
    image_scale = float(image_scale)
    if not (math.isfinite(image_scale) and image_scale > 0):
        raise DataError(f"image_scale for {image_path} must be a positive number, got {image_scale}")
    side = crop_side(spec, image_scale=image_scale, source_um_per_px=source_um_per_px, image_path=image_path)
    p = spec.patch_px
    st = _source_stat(image_path)
    n_in = len(bcs)
    with open_image(image_path) as src:
        h, w = src.shape
        scaled = coords * image_scale
        finite = np.isfinite(scaled).all(axis=1)
        centre = np.zeros((n_in, 2), dtype=np.int64)
        centre[finite] = np.floor(scaled[finite] + 0.5).astype(np.int64)
        inside = finite & (centre[:, 0] >= 0) & (centre[:, 0] < w) & (centre[:, 1] >= 0) & (centre[:, 1] < h)
        if not inside.any():
            raise DataError(
                f"none of the {n_in} spots lies inside image {image_path} ({w} x {h} px at image_scale "
                f"{image_scale:g}); check that the spot coordinates and image_scale belong to this image"
            )
        kept = np.flatnonzero(inside)
        dropped = np.flatnonzero(~inside)
        x0 = centre[kept, 0] - side // 2
        y0 = centre[kept, 1] - side // 2
        padded = (x0 < 0) | (y0 < 0) | (x0 + side > w) | (y0 + side > h)
        n_kept = len(kept)
        if len(dropped):
            shown = ", ".join(bcs[dropped[:5]]) + (", ..." if len(dropped) > 5 else "")
            log.warning("%s: %d of %d spots lie outside the image and are dropped (%s)",
                        image_path, len(dropped), n_in, shown)
        str_dt = h5py.string_dtype("utf-8")
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                attrs = {
                    "format_version": FORMAT_VERSION,
                    "source_path": str(image_path.resolve()),
                    "source_size": int(st.st_size),
                    "source_mtime": float(st.st_mtime),
                    "reader_version": str(reader_version),
                    "image_reader_version": IMAGE_READER_VERSION,
                    "patch_px": p,
                    "target_um_per_px": _nan(spec.target_um_per_px),
                    "source_um_per_px": _nan(source_um_per_px),
                    "image_scale": image_scale,
                    "crop_px": side,
                    "image_height": int(h),
                    "image_width": int(w),
                    "n_spots_in": int(n_in),
                    "n_kept": int(n_kept),
                    "n_padded": int(padded.sum()),
                    "n_dropped": int(len(dropped)),
                    "barcodes_sha256": spots_sha256(bcs, coords, g),
                    "compression": str(COMPRESSION),
                    "band_bytes": int(BAND_BYTES),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                if source_sha256:
                    attrs["source_sha256"] = str(source_sha256)
                f.attrs.update(attrs)
                f.create_dataset("barcodes", data=bcs[kept].astype(object), dtype=str_dt)
                f.create_dataset("coords", data=coords[kept])
                f.create_dataset("grid", data=g[kept])
                f.create_dataset("dropped_barcodes", data=bcs[dropped].astype(object), dtype=str_dt)
                images = f.create_dataset("images", shape=(n_kept, p, p, 3), dtype=np.uint8,
                                          chunks=(1, p, p, 3), compression=COMPRESSION,
                                          fletcher32=True)
                n_blank = _cut_bands(src, images, x0, y0, side, p, progress, task=f"patches {out.parent.name}/{out.stem}")
                f.attrs["n_blank"] = n_blank
                f.attrs["complete"] = True
    mark_verified(out)
    if n_blank:
        log.warning("%s: %d of %d patches are blank (every pixel one colour): the image shows no tissue at "
                    "%s spots; check that it is the right image (an all-black or empty image?)",
                    image_path, n_blank, n_kept, "these" if n_blank < n_kept else "any of its")
    log.debug("built %s: %d patches in %.1f s", out, n_kept, time.perf_counter() - t0)
    return out


def _cut_bands(src: Any, images: Any, x0: np.ndarray, y0: np.ndarray, side: int, p: int,
               progress: Progress | None, task: str) -> int:
    """Cut crops ``[y0:y0+side, x0:x0+side]`` into ``images`` from a rolling band buffer.

    Spots are sorted by row. The buffer spans the columns all crops need and, per band, the rows
    from the first remaining crop's top to ``end``; the rows it already holds (less than one crop)
    are kept and only new rows are read, in pieces aligned to the image's tile/strip rows, so each
    tile is decoded once. Memory: the buffer, ``(side + step + chunk_rows)`` rows, plus one piece.
    Returns the number of blank patches (see :data:`BLANK_RANGE`).
    """
    n = len(x0)
    xa, xb = int(x0.min()), int(x0.max()) + side
    xw = xb - xa
    cr = max(1, int(getattr(src, "chunk_rows", 1)))
    step = max(cr, (BAND_BYTES // (3 * xw)) // cr * cr)  # new rows per band
    piece = cr * max(1, 256 // cr)  # rows per read: whole tile/strip rows, at least ~256
    order = np.argsort(y0, kind="stable")
    ys = y0[order]
    last = -(-(int(ys[-1]) + side) // cr) * cr  # no read goes below the last crop's tile row
    buf = np.empty((min(side + step, last - int(ys[0])) + cr, xw, 3), dtype=np.uint8)
    buf_y0 = buf_y1 = 0
    pos = done = n_blank = 0
    if progress is not None:
        progress(task, 0, n)
    while pos < n:
        y_lo = int(ys[pos])
        if done and y_lo < buf_y1:  # keep the rows the next crops still need
            buf[:buf_y1 - y_lo] = buf[y_lo - buf_y0:buf_y1 - buf_y0]
            new_start = buf_y1
        else:
            new_start = y_lo
        end = max(y_lo + side, new_start + step)
        end = min(-(-end // cr) * cr, last)  # up to a tile/strip boundary
        r = new_start
        while r < end:
            r1 = min(end, (r // piece + 1) * piece)
            buf[r - y_lo:r1 - y_lo] = src.read(r, r1, xa, xb)
            r = r1
        buf_y0, buf_y1 = y_lo, end
        j = int(np.searchsorted(ys, end - side, side="right"))  # crops that end inside the buffer
        for k in np.sort(order[pos:j]):  # increasing output index: sequential chunk writes
            oy, ox = int(y0[k]) - buf_y0, int(x0[k]) - xa
            crop = buf[oy:oy + side, ox:ox + side]
            patch = _resize(crop, p) if side != p else crop
            images[int(k)] = patch
            n_blank += int(patch.max()) - int(patch.min()) <= BLANK_RANGE
        done += j - pos
        pos = j
        if progress is not None:
            progress(task, done, n)
    return n_blank


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------------- validation


def _norm(v: Any) -> Any:
    """HDF5 attr -> plain Python (NaN -> None, bytes -> str, numpy scalars -> Python)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)):
        return float(a) == float(b)
    return str(a) == str(b)


def validate_patches(path: str | os.PathLike, expected: dict[str, Any] | None = None) -> str | None:
    """None if ``path`` is a complete, consistent patch file whose attrs equal ``expected``;
    otherwise a short reason ("missing", "incomplete", "attrs patch_px 224 != 256", "unreadable: ...")."""
    import h5py

    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _norm(v) for k, v in f.attrs.items()}
            if attrs.get("complete") is not True:
                return "incomplete"
            if attrs.get("format_version") != FORMAT_VERSION:
                return f"format_version {attrs.get('format_version')} != {FORMAT_VERSION}"
            for name in _DATASETS:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    return f"dataset {name} missing"
            n, p = attrs.get("n_kept"), attrs.get("patch_px")
            img = f["images"]
            if img.dtype != np.uint8 or tuple(img.shape) != (n, p, p, 3):
                return f"images {img.dtype} {tuple(img.shape)} != uint8 ({n}, {p}, {p}, 3)"
            for name, shape in (("barcodes", (n,)), ("coords", (n, 2)), ("grid", (n, 2))):
                if tuple(f[name].shape) != shape:
                    return f"{name} shape {tuple(f[name].shape)} != {shape}"
            if n:
                img[n - 1]  # decompress and checksum one chunk
            for key, want in (expected or {}).items():
                if key not in attrs:
                    return f"attrs {key} missing"
                if not _same(attrs[key], want):
                    return f"attrs {key} {_norm(attrs[key])} != {_norm(want)}"
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError for damaged files
        return f"unreadable: {_first_line(e)}"
    return None


# --------------------------------------------------------------------------------------- reading


class H5Images:
    """Lazy, picklable (N, P, P, 3) uint8 view of a patch file's ``images``.

    Stores the path only; the HDF5 file is opened on first access in each process (and reopened
    after pickling or fork), so it is safe to hand to torch DataLoader workers. Indexing: int,
    slice, integer arrays in any order (with repeats), boolean masks, and a tuple whose first item
    is one of those; results are NumPy arrays.
    """

    def __init__(self, path: str | os.PathLike, name: str = "images") -> None:
        import h5py

        self.path = str(Path(path))
        self.name = name
        self._file: Any = None
        self._dset: Any = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                d = f[name]
                self.shape = tuple(int(v) for v in d.shape)
                self.dtype = np.dtype(d.dtype)
        except Exception as e:
            raise DataError(f"cannot read patch file {self.path}: {e}; delete it to rebuild") from None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _ds(self) -> Any:
        if self._dset is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")  # an inherited handle (fork) is dropped, not used
            self._dset = self._file[self.name]
            self._pid = os.getpid()
        return self._dset

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = self._dset = self._pid = None

    def _rows(self, index: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        if index.size == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        if index.min() < -n or index.max() >= n:
            raise IndexError(f"index out of range for {n} patches")
        index = np.where(index < 0, index + n, index)
        uniq, inverse = np.unique(index, return_inverse=True)
        ds = self._ds()
        if uniq[-1] - uniq[0] + 1 == len(uniq):  # a contiguous run: one slice
            data = ds[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            # h5py's fancy selection costs ~15 ms per 256 px patch; a direct read per row ~0.2 ms
            data = np.empty((len(uniq),) + tuple(self.shape[1:]), dtype=self.dtype)
            for j, i in enumerate(uniq):
                ds.read_direct(data, np.s_[int(i)], np.s_[j])
        return data[inverse.reshape(index.shape)]

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._getitem(key)
        except OSError as e:  # a chunk failed its checksum, or the file was cut
            forget_verified(Path(self.path))
            raise DataError(f"patch file {self.path} is damaged ({_first_line(e)}); rerun the command: "
                            f"stbench then checks every patch and rebuilds the file") from None

    def _getitem(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = self.shape[0]
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis,) + rest
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} patches")
            out = self._ds()[i % n]
        elif isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                out = self._ds()[start:stop] if stop > start else np.empty((0,) + self.shape[1:], self.dtype)
            else:
                out = self._rows(np.arange(start, stop, step))
        else:
            index = np.asarray(key)
            if index.dtype == np.bool_:
                if index.shape != (n,):
                    raise IndexError(f"boolean index of shape {index.shape} for {n} patches")
                index = np.flatnonzero(index)
            elif index.size == 0:
                index = index.astype(np.int64)
            elif index.dtype.kind not in "iu":
                raise IndexError(f"patches can only be indexed by integers, slices or masks, not {index.dtype}")
            out = self._rows(index.astype(np.int64))
        out = np.asarray(out)
        if rest:
            lead = (slice(None),) * (out.ndim - len(self.shape) + 1)  # keep the index's own axes
            out = out[lead + rest] if not isinstance(key, (int, np.integer)) else out[rest]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype, copy=False)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:
                pass
        self._file = self._dset = self._pid = None

    def __repr__(self) -> str:
        return f"H5Images({self.path!r}, shape={self.shape})"


def open_patches(path: str | os.PathLike) -> dict[str, Any]:
    """``images`` (:class:`H5Images`), ``barcodes`` (str array), ``coords``, ``grid``,
    ``dropped_barcodes`` and ``attrs`` (dict; NaN attrs as None) of a complete patch file."""
    import h5py

    path = Path(path)
    reason = validate_patches(path)
    if reason is not None:
        raise DataError(f"patch file {path} is not usable ({reason}); delete it or run `stbench cache clear` to rebuild")
    with h5py.File(path, "r") as f:
        attrs = {k: _norm(v) for k, v in f.attrs.items()}
        barcodes = np.asarray(f["barcodes"].asstr()[()], dtype=str)
        coords = np.asarray(f["coords"][()], dtype=np.float64)
        grid = np.asarray(f["grid"][()], dtype=np.int64)
        dropped = np.asarray(f["dropped_barcodes"].asstr()[()], dtype=str) if "dropped_barcodes" in f else np.array([], str)
    return {"images": H5Images(path), "barcodes": barcodes, "coords": coords, "grid": grid,
            "dropped_barcodes": dropped, "attrs": attrs}


# ---------------------------------------------------------------------------- cache management


def source_changed(path: str | os.PathLike) -> str | None:
    """Why the source image (if still there) no longer matches the one the file was cut from, or None."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _norm(v) for k, v in f.attrs.items()}
    except Exception as e:
        return f"unreadable: {_first_line(e)}"
    src = Path(str(attrs.get("source_path", "")))
    if attrs.get("source_path") and src.is_file():
        st = src.stat()
        if st.st_size != attrs.get("source_size"):
            return f"source {src} changed: size {st.st_size} != {attrs.get('source_size')}"
        if not attrs.get("source_sha256") and not _same(st.st_mtime, attrs.get("source_mtime")):
            return f"source {src} changed: mtime {st.st_mtime} != {attrs.get('source_mtime')}"
    return None


def list_cache(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per cached patch file: ``path``, ``slide_key``, ``spec_key``, ``n_kept``, ``n_blank``,
    ``size_bytes`` (also as ``size``), ``complete``, ``valid`` and ``reason`` (structure, or the source
    image changed since the build). :mod:`stbench.data.cache` covers every kind of cached file."""
    import h5py

    from ..cache import entries

    rows = []
    for row in entries(root, ["patches"]):
        if row["kind"] != "patches":
            continue
        path = row["path"]
        attrs: dict[str, Any] = {}
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: _norm(f.attrs.get(k)) for k in ("n_kept", "n_blank", "complete")}
        except Exception:
            pass
        slide_key, _, spec_key = row["key"].rpartition("/")
        rows.append({"path": path, "slide_key": slide_key, "spec_key": spec_key, "n_kept": attrs.get("n_kept"),
                     "n_blank": attrs.get("n_blank"), "size_bytes": row["size_bytes"], "size": row["size_bytes"],
                     "complete": attrs.get("complete") is True, "valid": row["valid"], "reason": row["reason"]})
    return rows


def verify_cache(root: str | os.PathLike | None = None) -> list[tuple[Path, str | None]]:
    """``(path, reason or None)`` for every cached patch file: structure, every chunk's checksum, and
    whether the source image changed since the build."""
    from ..cache import verify

    return [(path, reason) for _, path, reason in verify(root, ["patches"])]


def clear_cache(root: str | os.PathLike | None = None, pattern: str = "*") -> int:
    """Delete cached patch files whose slide key (or ``<slide key>/<spec key>``) matches ``pattern``,
    with their temporary, lock and stamp files; see :func:`stbench.data.cache.clear`."""
    from ..cache import clear

    return clear(root, pattern, ["patches"])
