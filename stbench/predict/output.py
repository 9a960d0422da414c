"""The AnnData ``predict`` returns: predictions in ``X`` and the scanpy/squidpy spatial layout
(:func:`stbench.report.export.spatial_library`, the one exports write), so ``scanpy.pl.spatial`` and
``squidpy.pl.spatial_scatter`` draw it as it is."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import anndata


def _clean(value: Any) -> Any:
    """JSON-like values h5ad stores on every supported anndata: None dropped, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value if v is not None]
    if isinstance(value, np.generic):
        return value.item()
    return value


def bundle_info(bundle: Any) -> dict[str, Any]:
    """What ``uns['stbench']`` records of the bundle: model, options, training slides."""
    m = bundle.manifest
    training = dict(m.get("training", {}))
    return {"bundle": str(bundle.path), "model": m.get("model"), "model_version": m.get("model_version"),
            "plugin": dict(m.get("plugin", {})), "options": dict(m.get("options", {})), "profile": m.get("profile"),
            "seed": m.get("seed"), "protocol": m.get("protocol"), "training_dataset": training.get("dataset"),
            "training_slides": list(training.get("slides", [])), "training_spots": training.get("n_spots"),
            "training_data_sha256": training.get("data_sha256"), "bundle_created": m.get("created"),
            "bundle_pixel_size_um": bundle.pixel_size_um, "patch_px": bundle.patch_px}


def prediction_anndata(pred: np.ndarray, slide: Any, genes: list[str], library_id: str, *, grid_known: bool,
                       images: tuple[np.ndarray, float, np.ndarray, float], info: Mapping[str, Any]) -> "anndata.AnnData":
    """Spots x genes: ``X`` the predictions (float32), ``obs`` array_row/array_col when the grid is known,
    ``obsm['spatial']`` full-resolution (x, y) pixels, ``uns['spatial'][library_id]`` the thumbnails and
    scale factors, ``uns['stbench']`` how the predictions were made."""
    import anndata
    import pandas as pd

    from ..report.export import spatial_library
    from ..report.thumbnail import spot_spacing

    obs = pd.DataFrame(index=pd.Index(np.asarray(slide.barcodes).astype(str), dtype=object))
    if grid_known:
        obs["array_row"] = np.asarray(slide.grid[:, 1], dtype=np.int64)
        obs["array_col"] = np.asarray(slide.grid[:, 0], dtype=np.int64)
    var = pd.DataFrame(index=pd.Index(list(genes), dtype=object))
    hires, hires_scale, lowres, lowres_scale = images
    coords = np.asarray(slide.coords, dtype=np.float64)
    library = spatial_library(hires, hires_scale, 0.55 * spot_spacing(coords), lowres=lowres, lowres_scale=lowres_scale,
                              metadata=_clean({"model": info.get("model"), "image": info.get("image")}))
    return anndata.AnnData(X=np.asarray(pred, dtype=np.float32), obs=obs, var=var,
                           obsm={"spatial": coords}, uns={"spatial": {library_id: library}, "stbench": _clean(info)})
