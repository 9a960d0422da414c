"""Fig. 2: per-gene metric distributions, one box per run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ResultsError
from ..results import RunResult
from .common import (BASELINE_COLOUR, _colours, _figure, _metric_label,
                     _metric_meta, _pooled, _save, _title, _wrap, figure_labels, leaderboard_order)


def metric_boxplots(results: Sequence[RunResult], out: str | os.PathLike,
                    metrics: Sequence[str] = ("rmse", "ssim")) -> Path:
    """Fig. 2: per-gene metric distributions, one panel per metric and one box per run."""
    if not results or not metrics:
        raise ResultsError("nothing to plot: no results or no metrics given")
    ordered = leaderboard_order(results)
    labels = [_wrap(x, 20) for x in figure_labels(ordered)]
    colours = _colours(sum(not r.baseline for r in ordered))
    faces, k = [], 0
    for r in ordered:
        faces.append(BASELINE_COLOUR if r.baseline else colours[k])
        k += not r.baseline
    pooled = {m: [_pooled(r, m) for r in ordered] for m in metrics}
    missing = [m for m, vals in pooled.items() if all(v is None for v in vals)]
    if missing:
        raise ResultsError(f"no results record per-gene {', '.join(missing)}; choose from rmse, ssim, pearson")
    fig = _figure(len(metrics) * max(3.2, 1.2 + 0.8 * len(ordered)), 4.8)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        _boxes(ax, pooled[metric], labels, faces)
        ax.set_ylabel(_metric_label(metric, ordered))
        ax.set_title(_metric_meta(metric, ordered)["label"])
    fig.suptitle(_title(ordered), fontsize=12)
    return _save(fig, out)


def _boxes(ax: Any, values: Sequence[np.ndarray | None], labels: Sequence[str], faces: Sequence[Any]) -> None:
    positions = np.arange(1, len(values) + 1)
    filled = [i for i, v in enumerate(values) if v is not None and len(v)]
    if filled:
        art = ax.boxplot([values[i] for i in filled], positions=positions[filled], widths=0.6, patch_artist=True,
                         medianprops={"color": "black"}, flierprops={"markersize": 2, "alpha": 0.4})
        for i, box in zip(filled, art["boxes"]):
            box.set_facecolor(faces[i])
    for i in sorted(set(range(len(values))) - set(filled)):
        ax.text(positions[i], 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", va="center", color="0.4")
    ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(0.4, len(values) + 0.6)
    ax.grid(axis="y", alpha=0.3)
