"""Apply a trained bundle (``stbench train``, :mod:`stbench.bundle`) to a slide that has no expression.

:func:`predict_slide` takes the slide's H&E image and either its spot positions or a grid spacing:

- ``positions``: a Space Ranger ``tissue_positions.csv`` / ``tissue_positions_list.csv`` (in-tissue spots,
  array_row/array_col as the grid), a CSV/TSV of pixel centres with a header (``pixel_x, pixel_y``, with
  ``x, y`` as the legacy ST grid in her2st ``*_selection.tsv`` files, rows with ``selected != 1`` dropped;
  or ``x, y`` pixel centres; an optional ``barcode``/``id`` column), an (N, 2) array of (x, y) pixel
  centres, or a DataFrame with those columns (:mod:`stbench.predict.positions`);
- ``grid_um``: a square grid of spots that many micrometres apart, kept where the tissue is (Otsu's
  threshold on the HSV saturation of a thumbnail; :mod:`stbench.predict.tissue`).

The slide's pixel size and the resampling rules are in :mod:`stbench.predict.slide`; patches go through
the stbench patch cache (``predict/<image>-<hash>``), so memory stays bounded on tiled TIFFs. The result
is an AnnData laid out as scanpy and squidpy expect (:mod:`stbench.predict.output`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import __version__
from ..errors import DataError, StbenchError
from .positions import Positions, read_positions

if TYPE_CHECKING:
    import anndata

Progress = Callable[..., None]

__all__ = ["Positions", "predict_slide", "read_positions"]


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise DataError(f"{name} must be a positive number, got {value!r}")
    return v


def _as_bundle(bundle: Any, device: str) -> Any:
    """A loaded :class:`stbench.bundle.Bundle`, or the folder of one (loaded onto ``device``)."""
    if isinstance(bundle, (str, os.PathLike)):
        from ..bundle import load_bundle
        from ..plugins import get_plugin_manager
        from ..runner import resolve_device

        return load_bundle(bundle, get_plugin_manager(), device=resolve_device(device))
    if not all(hasattr(bundle, a) for a in ("model", "manifest", "genes", "patch_px")):
        raise StbenchError(f"bundle must be a bundle folder or a loaded stbench.bundle.Bundle, got {type(bundle).__name__}")
    return bundle


def _spots(bundle: Any, image: Path, size: tuple[int, int], positions: Any, grid_um: float | None,
           pixel_size_um: float | None) -> tuple[Positions, float | None, str, dict[str, Any], Any]:
    """The spots to predict, the slide's pixel size and how it was obtained, what tiling found, and the
    thumbnails (read after the positions are checked, before tiling needs them)."""
    from .slide import keep_inside, slide_pixel_size, thumbnails
    from .tissue import grid_positions

    h, w = size
    if positions is not None:
        pos = read_positions(positions)
        slide_um, how = slide_pixel_size(bundle.pixel_size_um, pixel_size_um, pos)
        extra: dict[str, Any] = {"positions": pos.source, "positions_platform": pos.platform,
                                 "estimated_pixel_size_um": pos.um_per_px}
    else:
        slide_um, how = slide_pixel_size(bundle.pixel_size_um, pixel_size_um, None)
        if slide_um is None:
            raise DataError("grid_um (--grid-um) needs the slide's pixel size and the bundle records none; "
                            "pass --pixel-size (pixel_size_um=)")
        thumbs = thumbnails(image)
        pos, extra = grid_positions(w, h, grid_um / slide_um, thumbs[0], thumbs[1], grid_um)
        extra["positions"] = pos.source
        extra["tissue_detection"] = "Otsu threshold on HSV saturation (clamped), closing, small holes/specks removed"
    pos, n_out = keep_inside(pos, w, h, image)
    extra["spots_outside_image"] = n_out
    if positions is not None:
        thumbs = thumbnails(image)
    return pos, slide_um, how, extra, thumbs


def _predict(bundle: Any, slide: Any, progress: Progress | None) -> np.ndarray:
    report = progress or (lambda *a, **k: None)
    model = bundle.model
    previous = getattr(model, "_progress", None)
    model._progress = progress  # a model that reports while predicting drives the same bars
    try:
        report("predict", 0, len(slide))
        pred = np.asarray(model.predict(slide))
        report("predict", len(slide), len(slide))
    finally:
        model._progress = previous
    n, g = len(slide), len(bundle.genes)
    if pred.shape != (n, g):
        raise DataError(f"model '{bundle.manifest.get('model')}' returned shape {pred.shape}, expected ({n}, {g})")
    if not np.issubdtype(pred.dtype, np.number) or not np.isfinite(pred).all():
        raise DataError(f"model '{bundle.manifest.get('model')}' returned non-finite predictions")
    return pred.astype(np.float32)


def predict_slide(bundle: Any, image: str | os.PathLike, *, positions: Any = None, grid_um: float | None = None,
                  pixel_size_um: float | None = None, library_id: str | None = None, device: str = "auto",
                  progress: Progress | None = None) -> "anndata.AnnData":
    """Predict expression at the spots of ``image`` with ``bundle`` (a loaded Bundle, or its folder,
    loaded onto ``device``). Exactly one of ``positions`` and ``grid_um``. ``pixel_size_um``: the image's
    micrometres per pixel (else estimated from the positions' spot grid, else assumed equal to the
    bundle's). ``library_id``: the key under ``uns['spatial']`` (default: the image file's stem).
    ``progress(task, completed, total, **info)`` drives progress bars (cutting, predicting).

    Bad input raises a one-line :class:`stbench.StbenchError`; nothing is cut before the inputs are checked.
    """
    from .output import bundle_info, prediction_anndata
    from .slide import cut_patches, image_shape, model_grid, patch_spec, slide_patches

    if (positions is None) == (grid_um is None):
        raise DataError("give exactly one of --positions (positions=) and --grid-um (grid_um=)")
    grid_um = _positive(grid_um, "--grid-um (grid_um)")
    pixel_size_um = _positive(pixel_size_um, "--pixel-size (pixel_size_um)")
    if library_id is not None and (not str(library_id).strip() or "/" in str(library_id)):
        raise DataError(f"library id {library_id!r} must be a non-empty name without '/' (an h5ad key)")
    bundle = _as_bundle(bundle, device)
    image = Path(image)
    size = image_shape(image)
    pos, slide_um, how, extra, thumbs = _spots(bundle, image, size, positions, grid_um, pixel_size_um)
    spec, source_um = patch_spec(bundle.patch_px, bundle.pixel_size_um, slide_um)
    grid = model_grid(pos)
    cutting = None if progress is None else (
        lambda task, *a, **k: progress("cut patches" if task.startswith("patches ") else task, *a, **k))
    patches = cut_patches(image, pos, grid, spec, source_um, cutting)
    library_id = str(library_id) if library_id else image.name.split(".")[0] or "slide"
    slide = slide_patches(library_id, patches, bundle.genes, slide_um)
    pred = _predict(bundle, slide, progress)
    info = {**bundle_info(bundle), "stbench": __version__, "image": str(image.resolve()),
            "image_width": size[1], "image_height": size[0], "library_id": library_id, "n_spots": len(slide),
            "pixel_size_um": slide_um, "pixel_size_source": how, "resampled": spec.target_um_per_px is not None,
            "crop_px": int(patches["attrs"].get("crop_px") or bundle.patch_px), "grid": "spot grid"
            if pos.grid is not None else "coordinate ranks", **extra}
    return prediction_anndata(pred, slide, bundle.genes, library_id, grid_known=pos.grid is not None,
                              images=thumbs, info=info)
