"""What every figure shares: a headless matplotlib Figure saved atomically, run labels, metric labels,
the leaderboard's order, colours."""
from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ...atomic import atomic_path
from ...extras import require
from ..results import RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
KINDS = ("box", "loss", "umap", "spatial")
BASELINE_COLOUR = "#b0b0b0"
QUERY_COLOUR = "#d62728"
MAX_LABEL = 64


def _figure(width: float, height: float) -> Figure:
    Figure = require("matplotlib.figure", "stbench plot").Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, out: str | os.PathLike) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return re.sub(r"-{2,}", "-", slug) or "run"


def _own_options(result: RunResult) -> dict[str, Any]:
    """The options set on top of the run's profile (older results files: those changed from the defaults)."""
    return dict(sorted(result.extra.get("profile_changes", result.changed_options).items()))


def _join(result: RunResult, options: dict[str, Any], max_len: int) -> str:
    head = result.model if result.profile == "paper" else f"{result.model} {result.profile}"
    label = f"{head}: {', '.join(f'{k}={v}' for k, v in options.items())}" if options else head
    return label if len(label) <= max_len else label[: max_len - 1].rstrip(", ") + "…"


def short_label(result: RunResult, max_len: int = MAX_LABEL) -> str:
    """Model name, profile and the options set on top of the profile, e.g. ``my-model quick: epochs=2``."""
    return _join(result, _own_options(result), max_len)


def figure_labels(results: Sequence[RunResult], max_len: int = MAX_LABEL) -> list[str]:
    """Short labels that tell runs of one figure apart: where a model has several runs, the options
    all of them share are left out (they would only repeat)."""
    own = [_own_options(r) for r in results]
    shared: dict[str, set[tuple[str, str]]] = {}
    for r, o in zip(results, own):
        items = {(k, repr(v)) for k, v in o.items()}
        shared[r.model] = shared[r.model] & items if r.model in shared else items
    labels = []
    for r, o in zip(results, own):
        if sum(x.model == r.model for x in results) > 1:
            o = {k: v for k, v in o.items() if (k, repr(v)) not in shared[r.model]}
        labels.append(_join(r, o, max_len))
    return labels


def _wrap(label: str, width: int) -> str:
    return textwrap.fill(label, width, break_long_words=False, break_on_hyphens=False)


def _metric_meta(metric: str, results: Sequence[RunResult]) -> dict[str, Any]:
    """The metric's declaration as the results record it (the core's for files that predate labels)."""
    from ..leaderboard.rows import BoardContext, metric_meta

    return metric_meta(results, BoardContext.core()).get(metric, {"label": metric, "higher_is_better": True})


def _metric_label(metric: str, results: Sequence[RunResult]) -> str:
    meta = _metric_meta(metric, results)
    arrow = "↑ higher is better" if meta.get("higher_is_better", True) else "↓ lower is better"
    return f"{meta['label']} per gene ({arrow})"


def _pooled(result: RunResult, metric: str) -> np.ndarray | None:
    """Per-gene values of ``metric`` pooled over folds, NaN dropped; None if not recorded."""
    if not any(metric in f.get("per_gene", {}) for f in result.folds):
        return None
    values = np.concatenate([result.per_gene(i, metric) for i, f in enumerate(result.folds)
                             if metric in f.get("per_gene", {})])
    return values[np.isfinite(values)]


def leaderboard_order(results: Sequence[RunResult]) -> list[RunResult]:
    """The leaderboard's order: non-baselines first, then by mean Pearson (descending), then label."""
    from ..leaderboard import result_sort_key

    return sorted(results, key=result_sort_key)


def _title(results: Sequence[RunResult]) -> str:
    def one(values: Iterable[str]) -> str:
        return ", ".join(sorted(set(values)))

    return f"{one(r.dataset for r in results)} · {one(r.protocol for r in results)} protocol"


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
