"""Reader for slides already stored as AnnData files (``<slide>.h5ad``)."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .base import SlideReader
from .build import build_slide, counts_matrix, um_per_px_text, unique_gene_symbols
from .checks import check_in_image
from .geometry import grid_from_coordinates, image_size
from .params import positive_float_param, read_params
from .text import one_line

PARAMS = {
    "image": "image path relative to the data folder (or absolute; '{slide}' is replaced by the slide id); default "
             "uns['stbench']['image_path'], else the image in uns['spatial'][library]['images']",
    "library_id": "uns['spatial'] library holding the image (default: the only one, or the one named like the slide)",
    "image_key": "uns['spatial'] image to use: hires (default) or lowres",
    "image_scale": "factor from obsm['spatial'] pixels to image pixels (default uns value or 1.0)",
    "pixel_size_um": "um per full-resolution pixel (default uns['stbench']['pixel_size_um'] or unknown)",
    "layer": "take raw counts from this layer instead of X",
    "check_bounds": "fail when spot centres lie outside the image (default true)",
}


class AnnDataReader(SlideReader):
    """Slides stored as ``folder/<slide>.h5ad`` (e.g. exported from scanpy/squidpy or another pipeline).

    The file must hold raw counts in ``X`` (or in the layer named by params ``layer``) and full-resolution
    spot centres as (x, y) = (column, row) in ``obsm['spatial']``. The image is params ``image`` (``{slide}``
    is replaced by the slide id), else ``uns['stbench']['image_path']`` (relative paths are resolved against
    ``folder``; the file must exist), else, as scanpy and squidpy store Visium data, the ``hires`` (or
    ``lowres``, params ``image_key``) image of ``uns['spatial'][library]['images']`` with
    ``scalefactors['tissue_hires_scalef']`` as its scale: patches then come from a downsampled image (a
    warning says so), written once into the cache (``images/``) as a PNG so the patch cache can read it.
    ``image_scale`` and ``pixel_size_um`` come from params, else from ``uns['stbench']``, else 1.0 and
    None (unknown).

    ``obs['slide']`` is set to the slide id; ``obs['patient']`` to the ``patient`` argument, else the file's
    ``obs['patient']``, else the slide id. ``array_row``/``array_col`` are taken from ``obs`` when both are
    present (they must be integral); otherwise they are the dense ranks of the y and x coordinate levels
    (coordinates closer than a quarter of the median nearest-neighbour distance share a level; see
    :func:`grid_from_coordinates`): grid indices on an axis-aligned lattice, only an ordering otherwise.
    Duplicated gene symbols are made unique (``SYMBOL-1``) with a warning; duplicated spot names fail.
    Only ``X``, ``obs``, ``var`` and ``obsm['spatial']`` are kept (other layers, obsm and uns are dropped).

    Params: ``image``, ``library_id``, ``image_key``, ``image_scale``, ``pixel_size_um``, ``layer``,
    ``check_bounds`` (true).
    """

    name: ClassVar[str] = "anndata"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "slides stored as <slide>.h5ad with obsm['spatial'] and an image path"

    def read_slide(self, folder: Path, slide: str, *, patient: str | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        folder = Path(folder)
        path = folder / f"{slide}.h5ad"
        where = self.where(slide, path)
        opts = read_params(params, PARAMS, where)
        src = self._read_file(path, folder, where)
        return self.from_anndata(src, folder, slide, patient=patient, opts=opts, source=path, where=where)

    def from_anndata(self, src: Any, folder: Path, slide: str, *, patient: str | None = None, opts: Any = None,
                     source: Path | None = None, where: str | None = None) -> Any:
        """The slide AnnData of the reader contract from an AnnData already in memory (``source``: the file
        it came from, if any; relative image paths are resolved against ``folder``)."""
        import pandas as pd

        where = where or self.where(slide, source)
        opts = opts if opts is not None else read_params({}, PARAMS, where)
        meta_in = src.uns.get("stbench", {})
        meta_in = dict(meta_in) if isinstance(meta_in, dict) else {}
        X = self._counts(src, opts.values.get("layer"), where)
        xy = self._coordinates(src, where)
        obs, grid = self._obs(src.obs, xy, slide, patient, where)
        var = src.var.copy()
        var.index = pd.Index(unique_gene_symbols(var.index, where))
        image, scale = self._image(opts.values, meta_in, folder, where, slide, src.uns.get("spatial"))
        pixel_size = opts.pixel_size_um
        if pixel_size is None:
            pixel_size = positive_float_param({"pixel_size_um": meta_in.get("pixel_size_um")}, "pixel_size_um",
                                              f"{where}: uns['stbench']")
        if opts.check_bounds and np.isfinite(xy).all():
            check_in_image(xy, float(scale), image_size(image, where), image, where)
        return build_slide(
            self, X=X, obs=obs, var=var, spatial=xy, image=image, image_scale=scale, pixel_size_um=pixel_size,
            source_files=[str(source)] if source is not None else [], where=where,
            counts_file=source if source is not None else "the AnnData's X",
            summary=f"(grid from {grid}; image {image.name}, scale {float(scale):.6g}; "
                    f"{um_per_px_text(pixel_size)} um/px)")

    # ------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _read_file(path: Path, folder: Path, where: str) -> Any:
        import anndata

        if not path.is_file():
            raise DataError(f"{where}: file {path} does not exist; save the slide as <slide>.h5ad in {folder}")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*names are not unique.*")  # handled by the caller
                return anndata.read_h5ad(path)
        except Exception as e:  # noqa: BLE001
            raise DataError(one_line(f"{where}: cannot read {path} ({type(e).__name__}: {e}); "
                                     f"re-export it with AnnData.write_h5ad")) from None

    @staticmethod
    def _counts(src: Any, layer: str | None, where: str) -> Any:
        """Raw counts (``X`` or params ``layer``) as CSR float32."""
        if layer is not None:
            if layer not in src.layers:
                raise DataError(one_line(f"{where}: reader param layer '{layer}' is not a layer of the file "
                                         f"(layers: {', '.join(src.layers) or 'none'})"))
            X = src.layers[layer]
        else:
            X = src.X
        if X is None:
            raise DataError(f"{where}: the file has no X; store raw counts in X or set params layer")
        return counts_matrix(X)

    @staticmethod
    def _coordinates(src: Any, where: str) -> np.ndarray:
        """``obsm['spatial']`` as a float64 (N, 2) array."""
        import pandas as pd

        if "spatial" not in src.obsm:
            raise DataError(f"{where}: obsm['spatial'] is missing; store full-resolution (x, y) spot centres there")
        xy = src.obsm["spatial"]
        xy = np.asarray(xy.to_numpy() if isinstance(xy, pd.DataFrame) else xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise DataError(f"{where}: obsm['spatial'] has shape {xy.shape}, expected (n_spots, 2) = (x, y)")
        return xy

    @staticmethod
    def _obs(obs: Any, xy: np.ndarray, slide: str, patient: str | None, where: str) -> tuple[Any, str]:
        """(the file's ``obs`` with integer ``array_row``/``array_col``, ``slide`` and ``patient``, where the
        grid came from)."""
        import pandas as pd

        obs = obs.copy()
        if not obs.index.is_unique:
            raise DataError(one_line(f"{where}: spot names (obs_names) are not unique; make them unique before "
                                     f"saving (e.g. AnnData.obs_names_make_unique)"))
        obs.index = obs.index.astype(str)
        if "array_row" in obs and "array_col" in obs:
            for col in ("array_row", "array_col"):
                v = pd.to_numeric(obs[col], errors="coerce").to_numpy(dtype=float)
                if not np.isfinite(v).all() or not np.allclose(v, np.round(v)):
                    raise DataError(one_line(f"{where}: obs['{col}'] is not integral; fix it or drop both "
                                             f"array_row and array_col to derive them from the coordinates"))
                obs[col] = np.round(v).astype(np.int64)
            grid = "obs"
        else:
            obs["array_row"], obs["array_col"] = grid_from_coordinates(xy) if np.isfinite(xy).all() else (
                np.zeros(len(xy), np.int64), np.zeros(len(xy), np.int64))
            grid = "coordinate ranks"
        obs["slide"] = pd.Series(slide, index=obs.index, dtype=object)
        if patient:
            obs["patient"] = pd.Series(patient, index=obs.index, dtype=object)
        elif "patient" in obs and obs["patient"].notna().all():
            obs["patient"] = obs["patient"].astype(str).astype(object)
        else:
            obs["patient"] = pd.Series(slide, index=obs.index, dtype=object)
        return obs, grid

    @staticmethod
    def _image(params: dict[str, Any], meta_in: dict[str, Any], folder: Path, where: str, slide: str,
               spatial: Any) -> tuple[Path, float]:
        """(image path, image_scale): params ``image``, else ``uns['stbench']['image_path']``, else the
        ``uns['spatial']`` image (see the class docstring)."""
        image_ref = params.get("image", meta_in.get("image_path"))
        if image_ref is None and spatial:
            return _spatial_image(spatial, params, where, slide)
        if not isinstance(image_ref, str) or not image_ref:
            raise DataError(f"{where}: no image; set params image (relative to {folder}), uns['stbench']['image_path'] "
                            f"or store it as scanpy does in uns['spatial'][library]['images']")
        image_ref = image_ref.replace("{slide}", slide)
        image = Path(image_ref) if Path(image_ref).is_absolute() else folder / image_ref
        if not image.is_file():
            raise DataError(f"{where}: image {image} does not exist; fix params image or uns['stbench']['image_path']")
        scale = params.get("image_scale", meta_in.get("image_scale", 1.0))
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not (
                np.isfinite(scale) and scale > 0):
            raise DataError(f"{where}: image_scale must be a positive number, got {scale!r}")
        return image, scale


def _spatial_image(spatial: Any, params: dict[str, Any], where: str, slide: str) -> tuple[Path, float]:
    """The scanpy-layout image (``uns['spatial'][library]['images'][key]``) as a cached PNG, and its scale
    factor from ``scalefactors['tissue_<key>_scalef']``; warns that patches come from a downsampled image."""
    libraries = list(spatial)
    library = params.get("library_id")
    if library is None:
        library = slide if slide in libraries else (libraries[0] if len(libraries) == 1 else None)
    if library not in spatial:
        raise DataError(one_line(f"{where}: uns['spatial'] holds libraries {', '.join(map(str, libraries))}; set "
                                 f"params library_id to the one of this slide"))
    key = params.get("image_key", "hires")
    lib = spatial[library]
    images, factors = lib.get("images", {}), lib.get("scalefactors", {})
    if key not in images:
        raise DataError(one_line(f"{where}: uns['spatial']['{library}']['images'] has no '{key}' image (it has "
                                 f"{', '.join(images) or 'none'}); set params image_key or image"))
    scale = factors.get(f"tissue_{key}_scalef")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not 0 < float(scale) <= 1:
        raise DataError(one_line(f"{where}: uns['spatial']['{library}']['scalefactors'] lacks a valid "
                                 f"tissue_{key}_scalef (got {scale!r})"))
    path = cached_image(np.asarray(images[key]))
    warnings.warn(one_line(f"{where}: no full-resolution image given; patches will be cut from the downsampled "
                           f"uns['spatial']['{library}'] {key} image (scale {float(scale):g}); set params image to "
                           f"the full-resolution H&E for full detail"), UserWarning, stacklevel=4)
    return path, float(scale)


def cached_image(pixels: np.ndarray) -> Path:
    """An in-memory image (H x W x 3 or 4, uint8 or float in [0, 1]) written once to the cache as a PNG
    named by the hash of its pixels (``<cache>/images/<hash>.png``), so the patch cache can read it."""
    from PIL import Image

    from ...atomic import atomic_path
    from ..images import to_rgb
    from ..locations import cache_dir

    rgb = to_rgb(np.asarray(pixels))
    digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()[:24]
    path = cache_dir("images") / f"{digest}.png"
    if not path.is_file():
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
    return path
