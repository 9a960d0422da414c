"""The slide side of ``predict``: its image (size, thumbnails), which spots lie inside it, its pixel size
against the bundle's, and its patches, cut through the HDF5 patch cache at the bundle's pixel size.

Pixel-size rules (:func:`slide_pixel_size`, :func:`patch_spec`):

- the slide's pixel size is ``pixel_size_um`` (``--pixel-size``) when given; else the one estimated from
  the spot pitch when the positions carry a known platform grid (Space Ranger: 100 um centre to centre,
  array_col step 2; legacy ST / her2st spot files: 200 um, step 1); else it is assumed equal to the
  bundle's, with a warning naming ``--pixel-size``;
- an estimate more than :data:`MAX_RATIO` times off the bundle's is refused (a one-line error telling the
  user to pass ``--pixel-size``): the image is probably a downscaled copy, or the positions belong to
  another image;
- patches are resampled to the bundle's pixel size (``PatchSpec(patch_px, target_um_per_px=bundle)``,
  ``source_um_per_px`` = the slide's) when the two differ by more than :data:`RESAMPLE_TOLERANCE`, and
  cut at native resolution otherwise: training cut every slide at its own native resolution, and
  pitch estimates for sections of one scanner spread by a few percent (her2st C2-C6: 0.682-0.693 um/px
  from all spots, 0.669-0.713 from the 30-spot test crops, whose C2-C5 mean is 0.702), so resampling
  inside that spread would only blur the patches and move them away from what the model was trained on.
  A bundle without a pixel size is always cut at native resolution.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from ..slide import SlidePatches
from .positions import PITCH, Positions

log = logging.getLogger("stbench")

MAX_RATIO = 2.0
RESAMPLE_TOLERANCE = 0.10
HIRES_SIDE = 2000
LOWRES_SIDE = 600
READER_VERSION = "predict/1"

Progress = Callable[..., None]


def image_shape(image: Path) -> tuple[int, int]:
    """(height, width) of the full-resolution image; a one-line error when it cannot be opened."""
    from ..data.images import open_image

    if not image.is_file():
        raise DataError(f"image {image} does not exist; pass the slide's H&E image (TIFF, JPEG or PNG)")
    with open_image(image) as src:
        return tuple(int(v) for v in src.shape)  # type: ignore[return-value]


def thumbnails(image: Path) -> tuple[np.ndarray, float, np.ndarray, float]:
    """``(hires, hires_scale, lowres, lowres_scale)``: at most 2000 and 600 px on the longer side, as Space
    Ranger's ``tissue_hires_image.png`` and ``tissue_lowres_image.png``; the scales map full-resolution
    pixels onto them. Decodes the image (a damaged one fails here, before anything is written)."""
    from ..report.thumbnail import tissue_thumbnail
    from .tissue import _downscale

    try:
        hires, scale = tissue_thumbnail(image, max_side=HIRES_SIDE)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL and the TIFF codecs raise many types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read image {image}: {first}; replace it with an intact TIFF/JPEG/PNG") from None
    lowres, f = _downscale(hires, LOWRES_SIDE)
    return hires, scale, lowres, scale * f


def keep_inside(pos: Positions, width: int, height: int, image: Path) -> tuple[Positions, int]:
    """The spots whose rounded centre lies inside the image, and how many did not. More than half outside
    is an error (the positions belong to another image, or to another resolution of this one)."""
    centre = np.floor(pos.coords + 0.5)
    inside = (centre[:, 0] >= 0) & (centre[:, 0] < width) & (centre[:, 1] >= 0) & (centre[:, 1] < height)
    n_out = int((~inside).sum())
    if n_out * 2 > len(pos):
        raise DataError(f"{n_out} of {len(pos)} spots of {pos.source} lie outside image {image} ({width} x {height} "
                        f"px); check that the positions belong to this image at this resolution")
    if n_out:
        shown = ", ".join(pos.barcodes[~inside][:5])
        log.warning("%d of %d spots of %s lie outside image %s and are not predicted (%s%s)", n_out, len(pos),
                    pos.source, image.name, shown, ", ..." if n_out > 5 else "")
    return (pos.subset(inside) if n_out else pos), n_out


def slide_pixel_size(bundle_um: float | None, given: float | None, pos: Positions | None) -> tuple[float | None, str]:
    """The slide's micrometres per pixel and how it was obtained (see the module's rules)."""
    if given is not None:
        return float(given), "given (--pixel-size)"
    if pos is not None and pos.um_per_px is not None:
        step, um = PITCH[pos.platform]
        grid = "Space Ranger" if pos.platform == "spaceranger" else "legacy ST"
        how = f"estimated from the spot pitch of {pos.source} ({grid} grid: {um:g} um per {step} array_col)"
        if bundle_um is not None and max(pos.um_per_px / bundle_um, bundle_um / pos.um_per_px) > MAX_RATIO:
            raise DataError(f"the slide's pixel size, {how}, is {pos.um_per_px:.4g} um/px, more than {MAX_RATIO:g}x "
                            f"off the bundle's {bundle_um:.4g} um/px; pass --pixel-size (pixel_size_um=) with the "
                            f"image's real pixel size (--pixel-size {pos.um_per_px:.4g} if the estimate is right: "
                            f"patches are then resampled to the bundle's)")
        return float(pos.um_per_px), how
    if bundle_um is None:
        return None, "unknown (no --pixel-size, no spot grid, and the bundle records none)"
    why = "the positions carry no known spot grid" if pos is not None else "there are no positions"
    if pos is not None and pos.platform in PITCH:
        why = f"no neighbouring spots in {pos.source} to measure the pitch"
    log.warning("the slide's pixel size is unknown (%s): assuming the bundle's %.4g um/px; pass --pixel-size "
                "(pixel_size_um=) if the image has another resolution", why, bundle_um)
    return float(bundle_um), "assumed equal to the bundle's"


def patch_spec(patch_px: int, bundle_um: float | None, slide_um: float | None) -> tuple[Any, float | None]:
    """``(PatchSpec, source_um_per_px)``: resample to the bundle's pixel size when the slide's differs by
    more than :data:`RESAMPLE_TOLERANCE`, else native resolution."""
    from ..data.patches import PatchSpec

    if bundle_um is None or slide_um is None or abs(math.log(slide_um / bundle_um)) <= math.log1p(RESAMPLE_TOLERANCE):
        return PatchSpec(patch_px=patch_px), slide_um
    return PatchSpec(patch_px=patch_px, target_um_per_px=bundle_um), slide_um


def slide_key(image: Path) -> str:
    """``predict/<file stem>-<hash of the resolved path>``: the patch-cache folder of an image."""
    resolved = str(image.resolve())
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", image.name.split(".")[0]).strip("._") or "image"
    return f"predict/{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def cut_patches(image: Path, pos: Positions, grid: np.ndarray, spec: Any, source_um: float | None,
                progress: Progress | None = None) -> dict[str, Any]:
    """The slide's patches through the stbench patch cache (built or reused by ``ensure_patches``, read
    lazily: memory stays bounded on large tiled TIFFs), in ``<slide_key>/<spot table hash>/``: each set
    of spots of an image keeps its own file, reused when the same spots are predicted again."""
    from ..data.locations import cache_dir
    from ..data.patches import ensure_patches, open_patches, patch_file, spots_sha256

    spots = spots_sha256(pos.barcodes, pos.coords, grid)[:12]
    out = patch_file(cache_dir("patches").parent, f"{slide_key(image)}/{spots}", spec)
    path = ensure_patches(image, pos.coords, pos.barcodes, grid, out, spec, source_um_per_px=source_um,
                          reader_version=READER_VERSION, progress=progress)
    return open_patches(path)


def model_grid(pos: Positions) -> np.ndarray:
    """(x, y) grid positions for the model: the positions' own grid, else coordinate ranks."""
    if pos.grid is not None:
        return np.asarray(pos.grid, dtype=np.int64)
    from ..data.readers.geometry import grid_from_coordinates

    rows, cols = grid_from_coordinates(pos.coords)
    return np.column_stack([cols, rows]).astype(np.int64)


def slide_patches(slide_id: str, patches: dict[str, Any], genes: list[str], slide_um: float | None) -> SlidePatches:
    return SlidePatches(slide_id=slide_id, barcodes=patches["barcodes"], coords=patches["coords"],
                        grid=patches["grid"], images=patches["images"], genes=tuple(genes), expression=None,
                        pixel_size_um=slide_um)
