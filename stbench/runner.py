"""run(): fit and predict a model on every fold of a dataset, score it, write one results file."""
from __future__ import annotations

import contextlib
import datetime as _dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dataset import check_protocol
from .errors import DataError, StbenchError
from .eval.scoring import score_slide, summarise
from .options import build_options, changed_options, check_seed, options_dict, profile_changes
from .plugins import Plugins
from .report.predictions import PredictionsWriter, collect_slide_predictions, predictions_path
from .report.results import RunResult, config_hash, environment, result_path
from .nn.distributed import check_precision, checkpointing

Progress = Callable[..., None]


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
        raise StbenchError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StbenchError(f"device '{device}' requested but CUDA is not available; use --device cpu or auto")
    return device


@dataclass(frozen=True)
class RunRequest:
    model: str
    dataset: str
    folds: str = "default"
    protocol: str = "strict"
    seed: int = 0
    options: tuple[str, ...] = ()
    device: str = "auto"
    save_predictions: bool = True
    save_models: str | None = None
    #: keep each fold's last-epoch training state under ``<out>/checkpoints/`` while the run lasts
    checkpoints: bool = False
    #: continue each fold from that state (implies ``checkpoints``)
    resume: bool = False


def _check_prediction(pred: Any, n_spots: int, n_genes: int, model: str, slide: str) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.shape != (n_spots, n_genes):
        raise DataError(f"model '{model}' returned shape {pred.shape} for slide '{slide}', expected ({n_spots}, {n_genes})")
    if not np.issubdtype(pred.dtype, np.number) or not np.all(np.isfinite(pred)):
        raise DataError(f"model '{model}' returned non-finite predictions for slide '{slide}'")
    return pred


def plan(plugins: Plugins, req: RunRequest) -> dict[str, Any]:
    """Resolve names and options without running anything; the result identifies the run."""
    check_protocol(req.protocol)
    check_seed(req.seed)
    model_cls = plugins.models.get(req.model)
    dataset = plugins.datasets.get(req.dataset)
    options, profile = build_options(model_cls, req.options)
    folds = dataset.folds(req.folds)
    config = {"model": req.model, "dataset": req.dataset, "protocol": req.protocol, "seed": req.seed,
              "profile": profile, "options": options_dict(options),
              "folds": [[f.name, list(f.reference), list(f.query)] for f in folds]}
    return {"model_cls": model_cls, "dataset": dataset, "options": options, "profile": profile,
            "folds": folds, "config": config, "hash": config_hash(config),
            "versions": code_versions(plugins, req.model, model_cls, dataset)}


def code_versions(plugins: Plugins, model: str, model_cls: type, dataset: Any) -> dict[str, Any]:
    """The versions of the code a run's numbers depend on: stbench, the model's plugin, the model
    (``Model.version``) and the dataset's preparation (``Dataset.version``). ``stbench bench`` reruns a
    result recorded with other versions instead of keeping numbers the current code would not give."""
    from . import __version__

    origin = plugins.models.origin(model)
    plugin_version = next((i.version for i in plugins.loaded if i.name == origin), None)
    return {"stbench": __version__, "plugin": plugin_version, "model": str(getattr(model_cls, "version", "1")),
            "dataset": str(getattr(dataset, "version", "1"))}


def stale_reason(result: RunResult, versions: dict[str, Any]) -> str | None:
    """Why ``result`` was made by other code than ``versions`` describes, or None. Files written before
    versions were recorded are compared on what they do record (stbench and plugin versions)."""
    recorded = result.extra.get("versions") or {"stbench": result.environment.get("stbench"),
                                                "plugin": result.plugin.get("version")}
    for key, now in versions.items():
        if key in recorded and recorded[key] != now:
            return f"made with {key} version {recorded[key]}, now {now}"
    return None


def run(plugins: Plugins, req: RunRequest, out_dir: str | Path | None = None,
        progress: Progress | None = None, workdir: str | Path | None = None) -> tuple[RunResult, Path | None]:
    """Run every fold; write the results file into ``out_dir`` (if given) and return both. Each query
    slide's truth and predictions go to the predictions file as soon as the slide is scored.

    Under several data-parallel processes (:mod:`stbench.nn.distributed`) every rank runs every fold and
    rank 0 alone writes the results, predictions, bundles and checkpoints."""
    from .nn.distributed import rank_device, world

    p = plan(plugins, req)
    main = world().main
    target = None
    if out_dir is not None:
        target = result_path(out_dir, req.model, req.dataset, req.protocol, p["hash"])
        if main:
            _check_writable(target.parent)
    bundles = _bundle_folders(req, p["folds"])
    device = rank_device(resolve_device(req.device))
    check_precision(p["options"], device)
    checkpoints = checkpoint_folder(target) if target is not None and (req.checkpoints or req.resume) else None
    metrics = list(plugins.metrics.values())
    report = progress or (lambda *a, **k: None)
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        writer = None
        if target is not None and req.save_predictions and main:
            writer = stack.enter_context(PredictionsWriter(predictions_path(target), {
                "model": req.model, "dataset": req.dataset, "protocol": req.protocol, "config_hash": p["hash"]}))
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="stbench-"))
        for i, fold in enumerate(p["folds"]):
            report("folds", i, len(p["folds"]), fold=fold.name)
            with checkpointing(checkpoints / f"fold{i}" if checkpoints is not None else None, req.resume):
                records += run_fold(plugins, p, req, fold, metrics, device, Path(workdir or scratch) / f"fold{i}",
                                    progress, writer.add if writer is not None else None, bundles.get(fold.name))
        report("folds", len(p["folds"]), len(p["folds"]))
        result = _result(plugins, req, p, metrics, records, device, time.perf_counter() - started)
        if writer is not None:
            writer.meta["label"] = result.label
    path = result.save(target) if target is not None and main else None
    if checkpoints is not None and main:
        _remove_checkpoints(checkpoints)
    return result, path


def checkpoint_folder(target: Path) -> Path:
    """Where a run keeps its folds' last-epoch training state: ``<out>/checkpoints/<model>/<results name>``
    (no ``.json`` inside, so a results folder stays readable by the leaderboard)."""
    return target.parent.parent / "checkpoints" / target.parent.name / target.stem


def _remove_checkpoints(folder: Path) -> None:
    """A finished run's training state is not kept; empty parent folders go too."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def _bundle_folders(req: RunRequest, folds: list[Any]) -> dict[str, Path]:
    """``--save-models DIR``: one bundle folder per fold, ``DIR/<fold name>``; refused before any training
    when one exists already."""
    if not req.save_models:
        return {}
    out = {f.name: Path(req.save_models) / f.name.replace("/", "_") for f in folds}
    taken = [str(p) for p in out.values() if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    if taken:
        raise StbenchError(f"bundle folder {taken[0]} already exists; choose another --save-models folder or delete it")
    return out


def run_fold(plugins: Plugins, p: dict[str, Any], req: RunRequest, fold: Any, metrics: list[Any], device: str,
             workdir: Path, progress: Progress | None, sink: Callable[[Any], None] | None = None,
             bundle: Path | None = None) -> list[dict[str, Any]]:
    """Prepare one fold, fit a fresh model on its reference slides (kept as a bundle in ``bundle`` when
    given), predict and score each query slide; ``sink`` receives what the predictions file keeps of
    each. Returns the fold records."""
    from .nn.distributed import main_first, world

    with main_first():  # rank 0 builds any cache first; the others read it
        prepared = p["dataset"].prepare(fold, req.protocol, progress=progress)
    model = p["model_cls"](p["options"], device=device, seed=req.seed, protocol=req.protocol, workdir=workdir,
                           progress=progress, dataset_info=prepared.info)
    t0 = time.perf_counter()
    model.fit(list(prepared.train), list(prepared.genes))
    fit_s = time.perf_counter() - t0
    if bundle is not None and world().main:
        from .bundle import save_bundle
        from .training import bundle_manifest

        save_bundle(model, bundle, bundle_manifest(plugins, req.model, p["options"], p["profile"], req.seed,
                                                   req.protocol, p["dataset"], prepared))
    records = []
    for query in prepared.queries:
        if query.expression is not None:
            raise DataError(f"dataset '{req.dataset}' handed query slide '{query.slide_id}' with expression")
        t0 = time.perf_counter()
        pred = _check_prediction(model.predict(query), len(query), len(prepared.genes), req.model, query.slide_id)
        truth = prepared.truth[query.slide_id]
        record = score_slide(metrics, truth, pred, prepared.genes, query.coords)
        record.update({"fold": fold.name, "query": query.slide_id, "reference": list(fold.reference),
                       "n_spots": len(query), "n_genes": len(prepared.genes), "fit_seconds": fit_s,
                       "predict_seconds": time.perf_counter() - t0, "info": dict(prepared.info)})
        record.update(model.fold_extra())
        records.append(record)
        if sink is not None:
            sink(collect_slide_predictions(p["dataset"], model, fold.name, query, prepared, truth, pred, req.seed))
    return records


def _result(plugins: Plugins, req: RunRequest, p: dict[str, Any], metrics: list[Any], records: list[dict[str, Any]],
            device: str, wall_seconds: float) -> RunResult:
    cls = p["model_cls"]
    origin = plugins.models.origin(req.model)
    plugin_info = next((dict(name=i.name, source=i.source, version=i.version) for i in plugins.loaded if i.name == origin),
                       {"name": origin})
    return RunResult(
        model=req.model, dataset=req.dataset, protocol=req.protocol, seed=req.seed, profile=p["profile"],
        options=options_dict(p["options"]), changed_options=changed_options(p["options"]), plugin=plugin_info,
        baseline=bool(cls.card.baseline), split=req.folds if req.folds != "default" else p["dataset"].default_split,
        dataset_info=p["dataset"].info(), metrics={m.name: m.meta() for m in metrics},
        folds=records, summary=summarise(records), wall_seconds=wall_seconds,
        environment=environment(device, world_size=_world_size(), precision=check_precision(p["options"], device)),
        config=p["config"], config_hash=p["hash"], created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"profile_changes": profile_changes(cls, p["options"], p["profile"]), "versions": p["versions"],
               "card": cls.card.recorded()},
    )


def _world_size() -> int:
    from .nn.distributed import world

    return world().size


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stbench-write-check-"):
            pass
    except OSError as e:
        raise StbenchError(f"output folder {folder} is not writable ({e.strerror}); pass --out with a writable folder") from None

