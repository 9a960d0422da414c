"""The Python API: ``stbench.run``, ``stbench.train``, ``stbench.load`` and ``stbench.evaluate``, thin over
the same runner, trainer, bundles and metrics as the command line (docs/api.md).

Data is a catalogue name (``"her2st_C_HVG"``) or AnnData slides in the scanpy layout (raw counts in
``X``, full-resolution (x, y) spot centres in ``obsm['spatial']``, the image in ``uns['spatial']`` or as a
path in ``uns['stbench']['image_path']``): a list (slide names from their ``uns['spatial']`` library),
or a mapping ``{slide id: AnnData}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import DataError, StbenchError

Progress = Callable[..., None]

#: Keywords of run/train that describe in-memory data (the rest are model options).
DATA_KEYS = ("query", "gene_set", "n_per_slide", "harmony", "patch_px", "pixel_size_um")


def _plugins(plugins: Any = None) -> Any:
    from .plugins import get_plugin_manager

    return plugins if plugins is not None else get_plugin_manager()


def _options(options: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f"{k}={'none' if v is None else v}" for k, v in options.items())


def use_dataset(plugins: Any, data: Any, **data_options: Any) -> str:
    """The registered name of ``data``: a catalogue or plugin dataset name, a Dataset, or AnnData slides
    (registered as an in-memory dataset named by a hash of their contents)."""
    from .data.memory import InMemoryDataset, slide_names
    from .dataset import Dataset

    if isinstance(data, str):
        plugins.datasets.get(data)
        if data_options:
            raise StbenchError(f"{', '.join(data_options)} describe in-memory slides; the catalogue dataset "
                               f"'{data}' declares its own")
        return data
    if isinstance(data, Dataset):
        dataset = data
    else:
        slides = dict(data) if isinstance(data, Mapping) else dict(zip(slide_names(list(data)), data))
        dataset = InMemoryDataset(slides, **data_options)
    if dataset.name not in plugins.datasets:
        plugins.datasets.add(dataset.name, dataset, "python")
    return dataset.name


def _split(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = {k: v for k, v in kwargs.items() if k in DATA_KEYS}
    return data, {k: v for k, v in kwargs.items() if k not in DATA_KEYS}


def run(model: str, dataset: Any, *, folds: str = "default", protocol: str = "strict", seed: int = 0,
        device: str = "auto", out: str | Path | None = None, save_models: str | Path | None = None,
        progress: Progress | None = None, plugins: Any = None, **options: Any) -> Any:
    """Fit and score ``model`` on every fold of ``dataset``; the results (``RunResult``, what the CLI
    writes) are returned and, with ``out``, written there with their predictions file. Keywords in
    :data:`DATA_KEYS` describe in-memory slides; every other keyword is a model option
    (``run("my-model", slides, profile="quick", epochs=2)``)."""
    from .runner import RunRequest, run as run_one

    plugins = _plugins(plugins)
    data, model_options = _split(options)
    name = use_dataset(plugins, dataset, **data)
    req = RunRequest(model=model, dataset=name, folds=folds, protocol=protocol, seed=seed,
                     options=_options(model_options), device=device, save_predictions=out is not None,
                     save_models=None if save_models is None else str(save_models))
    result, _ = run_one(plugins, req, out, progress=progress)
    return result


@dataclass
class TrainedModel:
    """A fitted model with its bundle manifest: ``save`` it, ``predict`` new slides."""

    model: Any
    manifest: dict[str, Any]
    plugins: Any = None

    @property
    def genes(self) -> list[str]:
        return list(self.manifest["genes"])

    def save(self, folder: str | Path) -> Path:
        """Write the bundle (safetensors + verified JSON manifest) to a new folder."""
        from .bundle import save_bundle

        own = ("schema", "model", "model_version", "stbench", "files", "created")
        return save_bundle(self.model, folder, {k: v for k, v in self.manifest.items() if k not in own})

    def predict(self, slide: Any, *, positions: Any = None, grid_um: float | None = None,
                pixel_size_um: float | None = None, library_id: str | None = None,
                progress: Progress | None = None) -> Any:
        """Predicted expression (AnnData in the scanpy layout) for an image file (with ``positions`` or
        ``grid_um``) or an AnnData slide (its image and ``obsm['spatial']``)."""
        from .bundle import Bundle
        from .predict import predict_slide

        bundle = Bundle(self.model, self.manifest, Path("."))
        if isinstance(slide, (str, Path)):
            return predict_slide(bundle, slide, positions=positions, grid_um=grid_um, pixel_size_um=pixel_size_um,
                                 library_id=library_id, progress=progress)
        import pandas as pd

        image, scale, xy, pixel = _image_and_spots(slide, library_id)
        pixel = pixel_size_um or pixel
        spots = pd.DataFrame({"barcode": list(map(str, slide.obs_names)), "x": xy[:, 0] * scale, "y": xy[:, 1] * scale})
        out = predict_slide(bundle, image, positions=spots, pixel_size_um=None if pixel is None else pixel / scale,
                            library_id=library_id, progress=progress)
        return _to_full_resolution(out, scale)


def _image_and_spots(adata: Any, library_id: str | None) -> tuple[Path, float, np.ndarray, float | None]:
    """(image file, its scale from full-resolution pixels, full-resolution spot centres, µm per
    full-resolution pixel or None) of an AnnData slide, by the anndata reader's rules."""
    from .data.readers.anndata_reader import AnnDataReader

    reader = AnnDataReader()
    where = "the AnnData slide"
    meta = dict(adata.uns.get("stbench") or {})
    params = {"library_id": library_id} if library_id else {}
    image, scale = reader._image(params, meta, Path("."), where, str(library_id or "slide"), adata.uns.get("spatial"))
    xy = reader._coordinates(adata, where)
    pixel = meta.get("pixel_size_um")
    return image, float(scale), xy, None if pixel is None else float(pixel)


def _to_full_resolution(adata: Any, scale: float) -> Any:
    """Coordinates and scale factors of a prediction made on a downsampled image, back in full resolution."""
    if scale == 1.0:
        return adata
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64) / scale
    for lib in (adata.uns.get("spatial") or {}).values():
        factors = lib.get("scalefactors", {})
        for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
            if key in factors:
                factors[key] = float(factors[key]) * scale
        if "spot_diameter_fullres" in factors:
            factors["spot_diameter_fullres"] = float(factors["spot_diameter_fullres"]) / scale
    return adata


def train(model: str, slides: Any, *, subset: Sequence[str] = (), protocol: str = "strict", seed: int = 0,
          device: str = "auto", progress: Progress | None = None, plugins: Any = None, **options: Any) -> TrainedModel:
    """Fit ``model`` on ``slides`` (a dataset name, a Dataset, or AnnData slides; ``subset``: only these
    slide ids) with the same preprocessing and protocol as ``run``."""
    from .training import TrainRequest, train as train_one

    plugins = _plugins(plugins)
    data, model_options = _split(options)
    name = use_dataset(plugins, slides, **data)
    req = TrainRequest(model=model, dataset=name, slides=tuple(subset), protocol=protocol, seed=seed,
                       options=_options(model_options), device=device)
    fitted, manifest = train_one(plugins, req, None, progress=progress)
    return TrainedModel(fitted, manifest, plugins)


def load(folder: str | Path, *, device: str = "cpu", plugins: Any = None) -> TrainedModel:
    """A bundle written by ``stbench train`` or ``TrainedModel.save`` (verified; nothing is unpickled)."""
    from .bundle import load_bundle

    plugins = _plugins(plugins)
    bundle = load_bundle(folder, plugins, device=device)
    return TrainedModel(bundle.model, dict(bundle.manifest), plugins)


def evaluate(adata_true: Any, adata_pred: Any, *, slide_key: str | None = "slide", plugins: Any = None) -> tuple[Any, Any]:
    """Score predictions against measured expression with every registered metric, as runs score them.

    Spots are matched by ``obs_names`` and genes by ``var_names`` (those both hold, in the prediction's
    order). Slides are told apart by ``obs[slide_key]`` when present (else the whole AnnData is one
    slide). Returns ``(per_gene, per_slide)`` DataFrames: per (slide, gene) the per-gene metrics; per
    slide the mean and median over genes of each per-gene metric, each per-slide metric (Hit@T) and the
    top-gene summaries (e.g. ``pearson_hvg@50``)."""
    import pandas as pd

    from .eval.scoring import score_slide
    from .report.results import unpack_floats

    plugins = _plugins(plugins)
    metrics = list(plugins.metrics.values())
    spots = [s for s in map(str, adata_pred.obs_names) if s in set(map(str, adata_true.obs_names))]
    genes = [g for g in map(str, adata_pred.var_names) if g in set(map(str, adata_true.var_names))]
    if not spots or not genes:
        raise DataError(f"the two AnnData share {len(spots)} spot(s) and {len(genes)} gene(s); evaluate needs "
                        f"predictions for the measured spots (same obs_names) and genes (same var_names)")
    truth, pred = adata_true[spots, genes], adata_pred[spots, genes]
    labels = (truth.obs[slide_key].astype(str).to_numpy() if slide_key and slide_key in truth.obs
              else np.full(len(spots), "slide"))
    gene_rows, slide_rows = [], []
    for slide in dict.fromkeys(labels):
        rows = labels == slide
        t, p = _dense(truth.X[rows]), _dense(pred.X[rows])
        coords = np.asarray(truth.obsm["spatial"], dtype=np.float64)[rows] if "spatial" in truth.obsm else None
        record = score_slide(metrics, t, p, genes, coords)
        per_gene = {m: unpack_floats(v) for m, v in record["per_gene"].items()}
        gene_rows.append(pd.DataFrame({"slide": slide, "gene": genes, **per_gene}))
        flat = {"slide": slide, "n_spots": int(rows.sum()), "n_genes": len(genes)}
        for name, score in record["scores"].items():
            if "value" in score:
                flat[name] = score["value"]
            else:
                flat[f"{name}_mean"], flat[f"{name}_median"] = score["mean"], score["median"]
        slide_rows.append(flat)
    return pd.concat(gene_rows, ignore_index=True), pd.DataFrame(slide_rows)


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
