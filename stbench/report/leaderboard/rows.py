"""A board's rows (one per configuration, pooled over seeds), what the board knows about its metrics and
models, and the paired comparisons between rows. Nothing here names a model or a metric: ranking,
labels and column order come from the metrics' declarations, claims and calibration rows from the
model cards, as the results files record them (or, for files written before they did, as the installed
plugins declare them)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ...eval.scoring import summarise
from ..results import RunResult

#: The top-genes summary a board shows beside each metric that has them.
TOP_GENES_COLUMN = "hvg@50"


@dataclass(frozen=True)
class BoardContext:
    """Metric declarations (in column order) and model cards, for results files that do not record them."""

    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cards: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def core(cls) -> "BoardContext":
        """stbench's own metrics, no model cards."""
        from ...eval.metrics import BUILTIN_METRICS

        return cls(metrics={m.name: m.meta() for m in BUILTIN_METRICS})

    @classmethod
    def from_plugins(cls, plugins: Any) -> "BoardContext":
        cards = {name: plugins.models.get(name).card.recorded() for name in plugins.models.names()}
        return cls(metrics={m.name: m.meta() for m in plugins.metrics.values()}, cards=cards)


@dataclass
class Row:
    """One configuration (label) of a board: its runs over seeds, scored together."""

    label: str
    model: str
    baseline: bool
    runs: list[RunResult]

    @property
    def folds(self) -> list[dict[str, Any]]:
        return [f for r in self.runs for f in r.folds]

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        if len(self.runs) == 1:
            return self.runs[0].summary
        return summarise(self.folds)

    @property
    def changes(self) -> dict[str, Any]:
        r = self.runs[0]
        return dict(r.extra.get("profile_changes", r.changed_options))

    @property
    def n_folds(self) -> str:
        seeds = sorted({r.seed for r in self.runs})
        per_seed = len(self.runs[0].folds)
        return str(per_seed) if len(seeds) == 1 else f"{per_seed} × {len(seeds)} seeds"

    def card(self, context: BoardContext) -> Mapping[str, Any]:
        """The model card as the run recorded it, else as the installed plugin declares it."""
        return self.runs[0].extra.get("card") or context.cards.get(self.model, {})

    def pooled(self, metric: str) -> dict[tuple[int, str, str], float] | None:
        """Per-gene values keyed by (seed, query slide, gene), or None if not recorded."""
        out: dict[tuple[int, str, str], float] = {}
        for r in self.runs:
            for i, fold in enumerate(r.folds):
                if metric not in fold.get("per_gene", {}):
                    return None
                out.update(zip(((r.seed, fold["query"], g) for g in r.genes(i)), r.per_gene(i, metric)))
        return out

    def value(self, metric: str, stat: str = "mean") -> tuple[Any, Any]:
        s = self.summary.get(metric)
        if not s:
            return None, None
        return s.get(stat), s.get("median_sd" if stat == "median" else "sd")

    def shown(self, metric: str, stat: str = "mean") -> str:
        """The cell text: mean +- sd over folds (and seeds), or ``(n=1)``."""
        return fmt(*self.value(metric, stat), (self.summary.get(metric) or {}).get("n_folds"))


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def fmt(mean: Any, sd: Any, n: Any = None) -> str:
    """``0.123 ± 0.010``; ``0.123 (n=1)`` for a single value, which has no spread to show."""
    if not finite(mean):
        return "n/a"
    if n == 1:
        return f"{mean:.3f} (n=1)"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if finite(sd) else "")


def p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 1e-300" if p == 0 else f"{p:.1e}")


def p_is(p: float) -> str:
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


# ------------------------------------------------------------------------------------------ metrics


def metric_meta(results: Sequence[RunResult], context: BoardContext) -> dict[str, dict[str, Any]]:
    """Every metric the results record, with its declaration (label, direction, per gene, ranks, top
    genes): what the file records wins, the context fills what older files lack. Order: the context's
    (registration order), then the rest as recorded."""
    recorded: dict[str, dict[str, Any]] = {}
    for r in results:
        for name, meta in r.metrics.items():
            recorded.setdefault(name, dict(meta))
    names = [n for n in context.metrics if n in recorded] + [n for n in recorded if n not in context.metrics]
    out = {}
    for n in names:
        meta = {"label": n, "ranks": False, "top_genes": False, **context.metrics.get(n, {}), **recorded[n]}
        meta["label"] = meta.get("label") or n
        out[n] = meta
    return out


def rank_metric(meta: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The metric rows are ordered by: the first that declares ``ranks``."""
    return next((n for n, m in meta.items() if m.get("ranks")), None)


def label_of(meta: Mapping[str, Mapping[str, Any]], name: str) -> str:
    if name in meta:
        return str(meta[name]["label"])
    base, _, summary = name.partition("_")
    if base in meta and summary:
        by, _, k = summary.partition("@")
        return f"{meta[base]['label']} {by.upper()}-{k}"
    return name


def arrow(meta: Mapping[str, Mapping[str, Any]], name: str) -> str:
    base = name if name in meta else name.partition("_")[0]
    return "↑" if meta.get(base, {}).get("higher_is_better", True) else "↓"


def order_key(baseline: bool, value: Any, higher_is_better: bool, label: str) -> tuple:
    """Non-baselines first, the ranking metric best first (undefined last), then label."""
    v = value if finite(value) else None
    score = -math.inf if v is None else (v if higher_is_better else -v)
    return (baseline, -score, label)


def rows_of(results: Sequence[RunResult], context: BoardContext | None = None) -> list[Row]:
    context = context or BoardContext.core()
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    rows = [Row(label, rs[0].model, rs[0].baseline, sorted(rs, key=lambda r: r.seed)) for label, rs in groups.items()]
    meta = metric_meta(results, context)
    rank = rank_metric(meta)
    hib = bool(meta.get(rank, {}).get("higher_is_better", True))
    return sorted(rows, key=lambda row: order_key(row.baseline, row.value(rank)[0] if rank else None, hib, row.label))


def result_sort_key(result: RunResult, context: BoardContext | None = None) -> tuple:
    """The board's order for single runs: non-baselines first, the ranking metric best first, then label."""
    meta = metric_meta([result], context or BoardContext.core())
    rank = rank_metric(meta)
    value = result.summary.get(rank, {}).get("mean") if rank else None
    return order_key(result.baseline, value, bool(meta.get(rank, {}).get("higher_is_better", True)), result.label)


def paired(a: Row, b: Row, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-gene values of ``a`` and ``b`` on the (seed, slide, gene) keys both have."""
    pa, pb = a.pooled(metric), b.pooled(metric)
    if pa is None or pb is None:
        return None
    keys = sorted(set(pa) & set(pb))
    if not keys:
        return None
    return np.array([pa[k] for k in keys], dtype=float), np.array([pb[k] for k in keys], dtype=float)


def reference_row(rows: Sequence[Row]) -> Row:
    """The configuration of a model with the fewest changed options (its default)."""
    return min(rows, key=lambda r: (len(r.changes), r.label))
