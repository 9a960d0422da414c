"""train(): fit a model on chosen slides of a dataset, with the same preprocessing and protocol as a
run, and keep it as a bundle (:mod:`stbench.bundle`) that ``stbench predict`` applies to new slides."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .bundle import data_sha256, read_manifest, save_bundle
from .dataset import Fold, PreparedFold, check_protocol
from .errors import DataError, did_you_mean
from .options import build_options, check_seed, options_dict
from .plugins import Plugins

Progress = Callable[..., None]


@dataclass(frozen=True)
class TrainRequest:
    model: str
    dataset: str
    slides: tuple[str, ...] = ()
    protocol: str = "strict"
    seed: int = 0
    options: tuple[str, ...] = ()
    device: str = "auto"


def training_fold(dataset: Any, slides: Sequence[str]) -> Fold:
    """A fold whose reference is ``slides`` (all the dataset's slides when empty) and with no query."""
    chosen = list(slides) or list(dataset.slides)
    for s in chosen:
        if s not in dataset.slides:
            raise DataError(f"dataset '{dataset.name}' has no slide '{s}'{did_you_mean(s, dataset.slides)}; "
                            f"slides: {', '.join(dataset.slides)}")
    if len(set(chosen)) != len(chosen):
        raise DataError("--slides names a slide more than once; list each training slide once")
    return Fold("train=" + "+".join(chosen), tuple(chosen), ())


def bundle_manifest(plugins: Plugins, model_name: str, options: Any, profile: str, seed: int, protocol: str,
                    dataset: Any, prepared: PreparedFold) -> dict[str, Any]:
    """What a bundle records besides the weights: options, genes, preprocessing, input handling and
    the training data (slides and a hash of their expression)."""
    origin = plugins.models.origin(model_name)
    plugin = next(({"name": i.name, "version": i.version} for i in plugins.loaded if i.name == origin), {"name": origin})
    train = list(prepared.train)
    sizes = [s.pixel_size_um for s in train if s.pixel_size_um]
    return {
        "plugin": plugin, "options": options_dict(options), "profile": profile, "seed": seed, "protocol": protocol,
        "genes": list(prepared.genes),
        "preprocessing": {k: v for k, v in dict(prepared.info).items() if k not in ("spots", "blank_patches")},
        "input": {"patch_px": int(train[0].patch_shape[0]),
                  "pixel_size_um": float(sum(sizes) / len(sizes)) if sizes else None},
        "training": {"dataset": dataset.name, "dataset_version": str(getattr(dataset, "version", "1")),
                     "slides": [s.slide_id for s in train], "n_spots": sum(len(s) for s in train),
                     "data_sha256": data_sha256(train, prepared.genes)},
    }


def train(plugins: Plugins, req: TrainRequest, out: str | Path | None = None, progress: Progress | None = None,
          workdir: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Fit ``req.model`` on the slides; write the bundle to ``out`` when given. Returns the fitted model
    and its manifest."""
    from .runner import resolve_device

    check_protocol(req.protocol)
    check_seed(req.seed)
    cls = plugins.models.get(req.model)
    dataset = plugins.datasets.get(req.dataset)
    options, profile = build_options(cls, req.options)
    fold = training_fold(dataset, req.slides)
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise DataError(f"bundle folder {out} already exists; choose another --out or delete it")
    device = resolve_device(req.device)
    prepared = dataset.prepare(fold, req.protocol, progress=progress)
    with tempfile.TemporaryDirectory(prefix="stbench-train-") as scratch:
        model = cls(options, device=device, seed=req.seed, protocol=req.protocol, workdir=Path(workdir or scratch),
                    progress=progress, dataset_info=prepared.info)
        model.fit(list(prepared.train), list(prepared.genes))
    manifest = bundle_manifest(plugins, req.model, options, profile, req.seed, req.protocol, dataset, prepared)
    if out is not None:
        save_bundle(model, out, manifest)
        manifest = read_manifest(out)
    return model, manifest
