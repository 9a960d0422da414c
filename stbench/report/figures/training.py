"""Fig. 3: training and validation loss curves."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ResultsError
from ..results import RunResult
from .common import (_figure, _save, _title, _wrap, figure_labels, leaderboard_order)


def _histories(result: RunResult) -> list[dict[str, Any]]:
    return [f["history"] for f in result.folds if (f.get("history") or {}).get("epochs")]


def _curve(histories: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, folds x epochs values, NaN-padded) for one loss; None if no fold recorded it."""
    epochs = sorted({int(e["epoch"]) for h in histories for e in h["epochs"]})
    col = {e: i for i, e in enumerate(epochs)}
    table = np.full((len(histories), len(epochs)), np.nan)
    for row, h in enumerate(histories):
        for e in h["epochs"]:
            if e.get(key) is not None:
                table[row, col[int(e["epoch"])]] = float(e[key])
    return (np.asarray(epochs), table) if np.isfinite(table).any() else None


def loss_curves(results: Sequence[RunResult], out: str | os.PathLike) -> Path:
    """Fig. 3: train and validation loss per epoch, mean over folds with a min-max band."""
    runs = [(r, h) for r in leaderboard_order(results) for h in [_histories(r)] if h]
    if not runs:
        raise ResultsError("no loss history in these results: only trained models (not baselines) record one")
    cols = min(3, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = _figure(4.2 * cols, 3.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = figure_labels([r for r, _ in runs])
    for ax, (_, hist), label in zip(axes, runs, labels):
        _loss_panel(ax, hist)
        ax.set_title(_wrap(label, 44), fontsize=9)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.suptitle(f"Loss curves · {_title([r for r, _ in runs])}", fontsize=12)
    return _save(fig, out)


def _loss_panel(ax: Any, histories: Sequence[dict[str, Any]]) -> None:
    for key, name, colour in (("train_loss", "train", "#1f77b4"), ("val_loss", "validation", "#ff7f0e")):
        curve = _curve(histories, key)
        if curve is None:
            continue
        epochs, table = curve
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)
        ax.plot(epochs, mean, marker="o", markersize=3, color=colour, label=name)
        ax.fill_between(epochs, lo, hi, color=colour, alpha=0.2, linewidth=0)
    best = [h["best_epoch"] for h in histories if h.get("best_epoch")]
    if best:
        ax.axvline(float(np.median(best)), color="0.5", linestyle=":", label="best epoch (median)")
    n = len(histories)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (mean of {n} fold{'s' * (n != 1)}; band: min–max)", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
