"""Small pictures of a slide for figures and AnnData exports: a downscaled tissue image, or, for a
dataset without an image file, a mosaic of its spot patches placed at their coordinates.

Both return ``(image, scale)``: a uint8 (H, W, 3) array and the factor that maps full-resolution
pixel coordinates onto it (the role of Space Ranger's ``tissue_hires_scalef``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

MAX_SIDE = 1000


def tissue_thumbnail(image_path: str | os.PathLike, image_scale: float = 1.0,
                     max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """Downscale the slide image so its longer side is at most ``max_side``, reading it in bands
    (TIFF) or with the JPEG decoder's reduced-size draft mode, never whole at full size."""
    from PIL import Image

    from ..data.images import PILImageSource, _unlimited_pixels, open_image

    src = open_image(image_path)
    try:
        h, w = src.shape
        step = max(1, int(np.ceil(max(h, w) / max_side)))
        if isinstance(src, PILImageSource):
            with _unlimited_pixels(), Image.open(image_path) as im:
                im.draft("RGB", (w // step, h // step))
                im = im.convert("RGB").resize((max(1, w // step), max(1, h // step)), Image.Resampling.BILINEAR)
                thumb = np.asarray(im)
        else:
            band = max(step, (src.chunk_rows // step) * step or step)
            rows = []
            for y0 in range(0, h - h % step or h, band):
                block = src.read(y0, min(y0 + band, h), 0, w)
                rows.append(block[::step, ::step])
            thumb = np.concatenate(rows)[: h // step or 1, : w // step or 1]
    finally:
        src.close()
    return np.ascontiguousarray(thumb, dtype=np.uint8), float(image_scale) * thumb.shape[1] / w


def patch_mosaic(coords_xy: np.ndarray, images: Any, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """White canvas with every spot's patch drawn at its centre, sized to 80% of the spot spacing."""
    from PIL import Image

    coords = np.asarray(coords_xy, dtype=np.float64)
    n = len(coords)
    if n == 0:
        return np.full((8, 8, 3), 255, np.uint8), 1.0
    spacing = spot_spacing(coords)
    extent = coords.max(0) + spacing
    scale = max_side / float(max(extent.max(), 1.0))
    side = max(1, int(round(0.8 * spacing * scale)))
    width, height = (int(np.ceil(e * scale)) + side for e in extent)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i in range(n):
        tile = np.asarray(Image.fromarray(np.asarray(images[i], dtype=np.uint8)).resize((side, side), Image.Resampling.BILINEAR))
        x0, y0 = (int(round(c * scale)) - side // 2 for c in coords[i])
        x0, y0 = max(x0, 0), max(y0, 0)
        canvas[y0:y0 + side, x0:x0 + side] = tile[: height - y0, : width - x0]
    return canvas, scale


def spot_spacing(coords_xy: np.ndarray) -> float:
    """Median nearest-neighbour distance between spots (1 for a single spot)."""
    coords = np.asarray(coords_xy, dtype=np.float64)
    if len(coords) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(coords).query(coords, k=2)
    return float(np.median(d[:, 1])) or 1.0


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
