"""True and predicted expression of the best-predicted genes on the tissue."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ResultsError
from ..predictions import SlidePredictions
from .common import (_figure, _save)


def pearson_per_gene(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson r of every column, as the leaderboard scores it (NaN for a constant column)."""
    from ...eval.metrics import pearson

    return pearson(np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64))


def best_genes(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` highest per-gene Pearson r (ties and NaN: lower index first, NaN last)."""
    r = pearson_per_gene(true, pred)
    return np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[: max(0, n)]


def spatial_maps(slide: SlidePredictions, out: str | os.PathLike, genes: Sequence[str] | None = None,
                 n_genes: int = 4, label: str = "") -> Path:
    """True (top row) and predicted (bottom row) expression on the tissue thumbnail."""
    r = pearson_per_gene(slide.true, slide.pred)
    if genes is None:
        cols = best_genes(slide.true, slide.pred, n_genes)
    else:
        where = {g: i for i, g in enumerate(slide.genes)}
        absent = [g for g in genes if g not in where]
        if absent:
            raise ResultsError(f"gene(s) {', '.join(absent)} not predicted for slide '{slide.query}'")
        cols = np.asarray([where[g] for g in genes], dtype=int)
    if not len(cols):
        raise ResultsError(f"slide '{slide.query}' has no genes to map")
    xy = np.asarray(slide.coords, dtype=np.float64) * slide.thumbnail_scale
    diameter = max(float(slide.spot_diameter_px) * slide.thumbnail_scale, 1e-6)
    fig = _figure(2.9 * len(cols) + 0.6, 5.9)
    axes = fig.subplots(2, len(cols), squeeze=False)
    for j, c in enumerate(cols):
        values = (np.asarray(slide.true[:, c], dtype=np.float64), np.asarray(slide.pred[:, c], dtype=np.float64))
        norm = _shared_norm(*values)
        rtext = "n/a" if np.isnan(r[c]) else f"{r[c]:.2f}"
        for row, (v, what) in enumerate(zip(values, ("true", "predicted"))):
            art = _spots(axes[row, j], slide, xy, diameter, v, norm)
            axes[row, j].set_title(f"{slide.genes[c]} · {what}" + (f" · r = {rtext}" if row else ""), fontsize=9)
        fig.colorbar(art, ax=axes[:, j], shrink=0.7, aspect=30, pad=0.01)
    head = f"{label} · " if label else ""
    fig.suptitle(f"{head}slide {slide.query} (fold {slide.fold}): true (top) vs predicted (bottom)", fontsize=11)
    return _save(fig, out)


def _shared_norm(*arrays: np.ndarray) -> Any:
    from matplotlib.colors import Normalize

    v = np.concatenate([a[np.isfinite(a)] for a in arrays])
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    return Normalize(lo, hi if hi > lo else lo + 1e-9)


def _spots(ax: Any, slide: SlidePredictions, xy: np.ndarray, diameter: float, values: np.ndarray, norm: Any) -> Any:
    """Spots as circles of the real spot diameter in thumbnail pixels (data units), not marker points."""
    from matplotlib.collections import EllipseCollection

    if slide.thumbnail is not None:
        ax.imshow(slide.thumbnail, interpolation="antialiased")
    d = np.full(len(xy), diameter)
    art = EllipseCollection(d, d, np.zeros(len(xy)), units="xy", offsets=xy, offset_transform=ax.transData,
                            cmap="viridis", norm=norm, linewidths=0)
    art.set_array(np.ma.masked_invalid(values))
    ax.add_collection(art)
    if len(xy):
        lo, hi = xy.min(0) - diameter, xy.max(0) + diameter
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(hi[1], lo[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return art
