"""Fig. 4: UMAP of reference and query image embeddings."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import ResultsError
from ...extras import require
from ..predictions import SlidePredictions
from .common import (QUERY_COLOUR, _colours, _figure, _save, _wrap)


def _embedded_slide(predictions: Sequence[SlidePredictions], fold: str | None) -> SlidePredictions | None:
    return next((s for s in predictions if s.embeddings and (fold is None or s.fold == fold)), None)


def embedding_umap(predictions: Sequence[SlidePredictions], out: str | os.PathLike, label: str,
                   seed: int = 0, fold: str | None = None) -> Path:
    """Fig. 4: UMAP of one fold's reference and query image embeddings, coloured by slide."""
    slide = _embedded_slide(predictions, fold)
    if slide is None:
        if fold is not None and any(s.embeddings for s in predictions):
            raise ResultsError(f"no slide of fold '{fold}' has image embeddings; folds: "
                               f"{', '.join(sorted({s.fold for s in predictions if s.embeddings}))}")
        raise ResultsError(f"model {label} stores no image embeddings: UMAP figures are for models that embed "
                           f"images (Model.embed)")
    names = [n for n in ("reference", "query") if n in slide.embeddings]
    x = np.concatenate([slide.embeddings[n] for n in names]).astype(np.float32)
    ids = np.concatenate([np.asarray(slide.embedding_slides.get(n, [n] * len(slide.embeddings[n])), dtype=str)
                          for n in names])
    is_query = np.concatenate([np.full(len(slide.embeddings[n]), n == "query") for n in names])
    if len(x) < 5:
        raise ResultsError(f"fold '{slide.fold}' has {len(x)} embedded spots; a UMAP needs at least 5")
    xy = _umap(x, seed)
    fig = _figure(6.4, 5.4)
    ax = fig.subplots()
    refs = sorted(set(ids[~is_query]))
    for colour, sid in zip(_colours(len(refs)), refs):
        rows = (ids == sid) & ~is_query
        ax.scatter(*xy[rows].T, s=6, color=colour, alpha=0.5, linewidths=0, label=f"reference {sid}")
    for sid in sorted(set(ids[is_query])):
        rows = (ids == sid) & is_query
        ax.scatter(*xy[rows].T, s=12, color=QUERY_COLOUR, alpha=0.9, edgecolors="black", linewidths=0.3,
                   label=f"query {sid}")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2, loc="best", frameon=True)
    ax.set_title(f"{_wrap(label, 60)}\nimage embeddings · fold {slide.fold}", fontsize=10)
    return _save(fig, out)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    umap = require("umap", "UMAP figures (stbench plot --kind umap)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a fixed random_state disables parallelism
        model = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, init="spectral" if len(x) > 16 else "random")
        return np.asarray(model.fit_transform(x))
