"""The predictions file written beside a results file: what figures and exports are made from.

``<results stem>.predictions.h5`` holds, per query slide of every fold, the genes, barcodes,
full-resolution spot centres, the true and predicted expression (float32), a JPEG thumbnail of the
tissue with its scale factor, and (for models that can embed images) image embeddings of the
reference and query spots. The results JSON stays small and is what the leaderboard reads; this
file is large, optional (``--no-predictions``) and not needed by ``stbench leaderboard``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import ResultsError

SCHEMA = "stbench.predictions/1"
SUFFIX = ".predictions.h5"


@dataclass
class SlidePredictions:
    fold: str
    query: str
    genes: list[str]
    barcodes: np.ndarray
    coords: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    thumbnail: np.ndarray | None = None
    thumbnail_scale: float = 1.0
    spot_diameter_px: float = 1.0
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    embedding_slides: dict[str, np.ndarray] = field(default_factory=dict)


def predictions_path(results_path: str | os.PathLike) -> Path:
    p = Path(results_path)
    return p.with_name(p.name[: -len(".json")] + SUFFIX if p.name.endswith(".json") else p.name + SUFFIX)


def _strings(values: Sequence[Any]) -> np.ndarray:
    import h5py

    return np.asarray([str(v) for v in values], dtype=h5py.string_dtype())


class PredictionsWriter:
    """Streams query slides into a predictions file as each one is scored, so a run holds one slide's
    truth and predictions at a time; the file appears under its name only when the writer closes
    without an error (temporary name, then rename)."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
        self.path, self.meta, self.count = Path(path), dict(meta or {}), 0
        self._atomic: Any = None
        self._file: Any = None

    def __enter__(self) -> "PredictionsWriter":
        import h5py

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = h5py.File(tmp, "w")
        self._file.attrs["schema"] = SCHEMA
        return self

    def add(self, s: SlidePredictions) -> None:
        from .thumbnail import encode_jpeg

        gz = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        g = self._file.create_group(f"slides/{self.count:03d}")
        self.count += 1
        g.attrs.update({"fold": s.fold, "query": s.query, "thumbnail_scale": float(s.thumbnail_scale),
                        "spot_diameter_px": float(s.spot_diameter_px)})
        g["genes"] = _strings(s.genes)
        g["barcodes"] = _strings(s.barcodes)
        g["coords"] = np.asarray(s.coords, dtype=np.float64)
        g.create_dataset("true", data=np.asarray(s.true, dtype=np.float32), **gz)
        g.create_dataset("pred", data=np.asarray(s.pred, dtype=np.float32), **gz)
        if s.thumbnail is not None:
            g["thumbnail_jpeg"] = np.frombuffer(encode_jpeg(s.thumbnail), dtype=np.uint8)
        for name, emb in s.embeddings.items():
            g.create_dataset(f"embeddings/{name}", data=np.asarray(emb, dtype=np.float16), **gz)
            g[f"embedding_slides/{name}"] = _strings(s.embedding_slides.get(name, [s.query] * len(emb)))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        import json

        try:
            if exc_type is None:
                self._file.attrs["meta"] = json.dumps(self.meta, sort_keys=True, default=str)
            self._file.close()
        finally:
            self._atomic.__exit__(exc_type, exc, tb)
        return False


def write_predictions(path: str | os.PathLike, slides: Sequence[SlidePredictions], meta: Mapping[str, Any]) -> Path:
    with PredictionsWriter(path, meta) as writer:
        for s in slides:
            writer.add(s)
    return Path(path)


def load_predictions(path: str | os.PathLike) -> tuple[list[SlidePredictions], dict[str, Any]]:
    """Every query slide's predictions and the run's metadata; a one-line error if unreadable."""
    import json

    import h5py

    from .thumbnail import decode_jpeg

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"predictions file {path} does not exist; rerun the run without --no-predictions")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("schema") != SCHEMA:
                raise ResultsError(f"predictions file {path} has schema {f.attrs.get('schema')!r}, expected {SCHEMA!r}; rerun the run")
            meta = json.loads(f.attrs["meta"])
            out = []
            for key in sorted(f.get("slides", {})):
                g = f["slides"][key]
                emb = g.get("embeddings", {})
                out.append(SlidePredictions(
                    fold=str(g.attrs["fold"]), query=str(g.attrs["query"]),
                    genes=[x.decode() for x in g["genes"][()]], barcodes=g["barcodes"].asstr()[()],
                    coords=g["coords"][()], true=g["true"][()], pred=g["pred"][()],
                    thumbnail=decode_jpeg(g["thumbnail_jpeg"][()].tobytes()) if "thumbnail_jpeg" in g else None,
                    thumbnail_scale=float(g.attrs["thumbnail_scale"]), spot_diameter_px=float(g.attrs["spot_diameter_px"]),
                    embeddings={n: emb[n][()].astype(np.float32) for n in emb},
                    embedding_slides={n: g["embedding_slides"][n].asstr()[()] for n in emb},
                ))
    except ResultsError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ResultsError(f"predictions file {path} is unreadable ({type(e).__name__}); delete it and rerun the run") from None
    return out, meta


MAX_REFERENCE_EMBEDDINGS = 2000


def collect_slide_predictions(dataset: Any, model: Any, fold: str, query: Any, prepared: Any, true: np.ndarray,
                              pred: np.ndarray, seed: int) -> SlidePredictions:
    """What the predictions file keeps of one query slide: truth, prediction, a thumbnail of the
    tissue and, for models that embed images, query and (up to 2,000 sampled) reference embeddings."""
    from .thumbnail import patch_mosaic, spot_spacing, tissue_thumbnail

    image = dataset.image_of(query.slide_id)
    thumb, scale = tissue_thumbnail(*image) if image is not None else patch_mosaic(query.coords, query.images)
    embeddings, slides = {}, {}
    if type(model).supports_embeddings():
        rng = np.random.default_rng(seed)
        ref_parts, ref_slides = [], []
        total = sum(len(s) for s in prepared.train)
        for s in prepared.train:
            n = len(s) if total <= MAX_REFERENCE_EMBEDDINGS else int(round(len(s) * MAX_REFERENCE_EMBEDDINGS / total))
            rows = np.sort(rng.choice(len(s), size=min(n, len(s)), replace=False))
            ref_parts.append(np.asarray(model.embed(s.subset(rows) if len(rows) < len(s) else s)))
            ref_slides += [s.slide_id] * len(rows)
        embeddings = {"reference": np.concatenate(ref_parts), "query": np.asarray(model.embed(query))}
        slides = {"reference": np.asarray(ref_slides), "query": np.asarray([query.slide_id] * len(query))}
    return SlidePredictions(fold=fold, query=query.slide_id, genes=list(prepared.genes), barcodes=query.barcodes,
                            coords=query.coords, true=true, pred=pred, thumbnail=thumb, thumbnail_scale=scale,
                            spot_diameter_px=0.55 * spot_spacing(query.coords),
                            embeddings=embeddings, embedding_slides=slides)
