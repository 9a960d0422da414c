"""Tissue detection on a thumbnail and a regular grid of spots over the tissue (``--grid-um``).

Method (:func:`tissue_mask`): the thumbnail is downscaled to at most :data:`MASK_SIDE` px, converted to
HSV (scikit-image ``rgb2hsv``) and its saturation channel smoothed (``gaussian``, sigma 1 px). Glass is
unsaturated (0.01-0.03), stained tissue is not, so a pixel is tissue when its saturation exceeds Otsu's
threshold (``skimage.filters.threshold_otsu``), never below :data:`MIN_SATURATION` (on a blank image
Otsu would call noise tissue). When the pixels below Otsu's threshold are themselves stained (mean
saturation above :data:`BACKGROUND_SATURATION`) the image has no glass in view, and Otsu would only split
dense from pale tissue: every pixel above :data:`MIN_SATURATION` is tissue then. (Full her2st sections:
Otsu 0.15-0.19, lower class mean 0.08; the 1780 x 1491 px crops of the test fixture, tissue everywhere:
Otsu 0.32-0.36, lower class mean 0.18.) The mask is then closed (binary closing with a disk of
:data:`CLOSING_PX` px, bridging the gaps between nuclei; the border is padded so that tissue touching
it is not eroded), holes smaller than :data:`HOLE_SPOTS` grid spots are filled (pale stroma, lumens) and
specks smaller than one spot removed (connected components, ``scipy.ndimage.label``: what scikit-image's
``remove_small_holes`` and ``remove_small_objects`` do, whose arguments change between the versions
stbench supports).

:func:`grid_positions` tiles the image with square-grid spot centres ``step`` px apart, centred on the
image, and keeps the spots whose centre falls on the mask.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from .positions import Positions

MASK_SIDE = 1000
MIN_SATURATION = 0.05
BACKGROUND_SATURATION = 0.12
CLOSING_PX = 2
HOLE_SPOTS = 16


def _downscale(thumb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = thumb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f >= 1.0:
        return thumb, 1.0
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    small = np.asarray(Image.fromarray(thumb).resize(size, Image.Resampling.BILINEAR))
    return small, small.shape[1] / w


def tissue_mask(thumb: np.ndarray, spot_px: float = 0.0) -> tuple[np.ndarray, float, float]:
    """``(mask, scale, threshold)``: a boolean tissue mask of ``thumb`` (downscaled to at most
    :data:`MASK_SIDE` px; ``scale`` maps thumbnail pixels onto it) and the saturation threshold used.
    ``spot_px``: a spot's side in thumbnail pixels (sizes the holes filled and the specks dropped)."""
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk

    small, scale = _downscale(np.asarray(thumb, dtype=np.uint8), MASK_SIDE)
    sat = gaussian(rgb2hsv(small)[..., 1], sigma=1)
    threshold = MIN_SATURATION
    if float(sat.max() - sat.min()) > 1e-6:
        otsu = float(threshold_otsu(sat))
        if float(sat[sat <= otsu].mean()) <= BACKGROUND_SATURATION:  # the lower class is glass
            threshold = max(otsu, MIN_SATURATION)
    r = CLOSING_PX
    padded = np.pad(sat > threshold, r, mode="edge")
    mask = ndimage.binary_closing(padded, structure=disk(r).astype(bool))[r:-r, r:-r]
    area = max(4, int(round((spot_px * scale) ** 2)))
    mask = ~_drop_small(~mask, HOLE_SPOTS * area)  # fill holes
    return _drop_small(mask, area), scale, threshold


def _drop_small(mask: np.ndarray, area: int) -> np.ndarray:
    """``mask`` without its connected components (4-connected) of fewer than ``area`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    small = np.bincount(labels.ravel()) < area
    small[0] = False
    return mask & ~small[labels]


def grid_centres(width: int, height: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(x, y)`` and grid ``(col, row)`` of a square grid ``step`` px apart, centred on the image."""
    nx, ny = max(1, int(math.floor(width / step))), max(1, int(math.floor(height / step)))
    x0, y0 = (width - (nx - 1) * step) / 2.0, (height - (ny - 1) * step) / 2.0
    col, row = np.meshgrid(np.arange(nx), np.arange(ny))
    grid = np.column_stack([col.ravel(), row.ravel()]).astype(np.int64)
    return np.column_stack([x0 + grid[:, 0] * step, y0 + grid[:, 1] * step]), grid


def grid_positions(width: int, height: int, step_px: float, thumb: np.ndarray, thumb_scale: float,
                   grid_um: float) -> tuple[Positions, dict[str, float]]:
    """Spots of a ``step_px`` square grid whose centre lies on tissue (:func:`tissue_mask` of ``thumb``,
    whose ``thumb_scale`` maps full-resolution pixels onto it), and what the detection found."""
    if not (math.isfinite(step_px) and step_px > 0):
        raise DataError(f"grid step {step_px} px is not a positive number; check --grid-um and --pixel-size")
    mask, scale, threshold = tissue_mask(thumb, spot_px=step_px * thumb_scale)
    centres, grid = grid_centres(width, height, step_px)
    f = thumb_scale * scale
    mx = np.clip(np.floor(centres[:, 0] * f).astype(np.int64), 0, mask.shape[1] - 1)
    my = np.clip(np.floor(centres[:, 1] * f).astype(np.int64), 0, mask.shape[0] - 1)
    on = mask[my, mx]
    info = {"grid_um": float(grid_um), "grid_step_px": float(step_px), "grid_spots": int(len(centres)),
            "tissue_spots": int(on.sum()), "tissue_fraction": float(mask.mean()),
            "saturation_threshold": float(threshold)}
    if not on.any():
        raise DataError(f"no tissue found under any of the {len(centres)} grid spots ({grid_um:g} um apart; "
                        f"saturation threshold {threshold:.3f}); check the image or pass --positions")
    ids = np.asarray([f"{c}x{r}" for c, r in grid[on]], dtype=str)
    return Positions(ids, centres[on], grid[on], "grid", f"grid every {grid_um:g} um over the tissue"), info
