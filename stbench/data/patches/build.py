"""Building a cached patch file: one patch per spot cut from the image in row bands, atomically and under
a lock; :func:`ensure_patches` reuses a file that validates (every chunk checked when it changed) and
rebuilds one that does not. A build first checks that the file fits on the cache's disk
(:func:`check_free_space`)."""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...atomic import atomic_path
from ...errors import DataError
from ..images import READER_VERSION as IMAGE_READER_VERSION
from ..images import open_image
from .spec import PatchSpec, crop_side, spots_sha256
from .store import FORMAT_VERSION, check_chunks, is_verified, mark_verified, validate_patches

log = logging.getLogger("stbench")

#: A patch is blank when every pixel value lies within this many levels of one value (no tissue).
BLANK_RANGE = 2
COMPRESSION = None
#: New rows read per band: BAND_BYTES // (3 * band width), rounded down to whole tile/strip rows.
BAND_BYTES = 32 * 1024 * 1024
#: Free space a build needs: per spot its patch (patch_px^2 x 3 bytes) and SPACE_PER_SPOT bytes (the chunk index,
#: checksum, barcode, coordinates: ~160 bytes measured), plus SPACE_MARGIN of that and SPACE_MARGIN_BYTES.
SPACE_PER_SPOT = 512
SPACE_MARGIN = 0.05
SPACE_MARGIN_BYTES = 16 * 1024 * 1024

Progress = Callable[..., None]


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


def _resize(crop: np.ndarray, p: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((p, p), resample=Image.BILINEAR))


def _place(coords: np.ndarray, bcs: np.ndarray, image_scale: float, side: int, h: int, w: int,
           image_path: Path) -> dict[str, Any]:
    """Which spots are kept (rounded centre inside the image), their crops' top-left corners, and which
    crops cross the border (padded white)."""
    n_in = len(bcs)
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
    kept, dropped = np.flatnonzero(inside), np.flatnonzero(~inside)
    x0, y0 = centre[kept, 0] - side // 2, centre[kept, 1] - side // 2
    if len(dropped):
        shown = ", ".join(bcs[dropped[:5]]) + (", ..." if len(dropped) > 5 else "")
        log.warning("%s: %d of %d spots lie outside the image and are dropped (%s)",
                    image_path, len(dropped), n_in, shown)
    return {"kept": kept, "dropped": dropped, "x0": x0, "y0": y0,
            "padded": (x0 < 0) | (y0 < 0) | (x0 + side > w) | (y0 + side > h)}


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
    with open_image(image_path) as src:
        h, w = src.shape
        at = _place(coords, bcs, image_scale, side, h, w, image_path)
        kept, dropped = at["kept"], at["dropped"]
        check_free_space(out, len(kept), p)
        attrs = {
            "format_version": FORMAT_VERSION, "source_path": str(image_path.resolve()), "source_size": int(st.st_size),
            "source_mtime": float(st.st_mtime), "reader_version": str(reader_version),
            "image_reader_version": IMAGE_READER_VERSION, "patch_px": p, "target_um_per_px": _nan(spec.target_um_per_px),
            "source_um_per_px": _nan(source_um_per_px), "image_scale": image_scale, "crop_px": side,
            "image_height": int(h), "image_width": int(w), "n_spots_in": int(len(bcs)), "n_kept": int(len(kept)),
            "n_padded": int(at["padded"].sum()), "n_dropped": int(len(dropped)),
            "barcodes_sha256": spots_sha256(bcs, coords, g), "compression": str(COMPRESSION),
            "band_bytes": int(BAND_BYTES), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"source_sha256": str(source_sha256)} if source_sha256 else {}),
        }
        str_dt = h5py.string_dtype("utf-8")
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            f.create_dataset("barcodes", data=bcs[kept].astype(object), dtype=str_dt)
            f.create_dataset("coords", data=coords[kept])
            f.create_dataset("grid", data=g[kept])
            f.create_dataset("dropped_barcodes", data=bcs[dropped].astype(object), dtype=str_dt)
            images = f.create_dataset("images", shape=(len(kept), p, p, 3), dtype=np.uint8, chunks=(1, p, p, 3),
                                      compression=COMPRESSION, fletcher32=True)
            n_blank = _cut_bands(src, images, at["x0"], at["y0"], side, p, progress,
                                 task=f"patches {out.parent.name}/{out.stem}")
            f.attrs["n_blank"] = n_blank
            f.attrs["complete"] = True
    mark_verified(out)
    if n_blank:
        log.warning("%s: %d of %d patches are blank (every pixel one colour): the image shows no tissue at "
                    "%s spots; check that it is the right image (an all-black or empty image?)",
                    image_path, n_blank, len(kept), "these" if n_blank < len(kept) else "any of its")
    log.debug("built %s: %d patches in %.1f s", out, len(kept), time.perf_counter() - t0)
    return out


def check_free_space(out: Path, n_patches: int, patch_px: int) -> None:
    """A one-line DataError, before anything is written, when the folder of ``out`` lacks the space for
    ``n_patches`` patches of ``patch_px`` px (uncompressed uint8 RGB) and the margins (see SPACE_PER_SPOT)."""
    need = int(n_patches * (patch_px * patch_px * 3 + SPACE_PER_SPOT) * (1 + SPACE_MARGIN)) + SPACE_MARGIN_BYTES
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:  # no answer (an unusual file system): let the write itself fail, as before
        return
    if free < need:
        raise DataError(f"not enough disk space for the patch cache file {out}: {n_patches} patches of "
                        f"{patch_px} x {patch_px} px need {_gb(need)} and {out.parent} has {_gb(free)} free; set "
                        f"STBENCH_CACHE to a folder on a larger disk, or use a smaller patch_px")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


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
