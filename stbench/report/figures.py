"""Figures from results and predictions files: metric boxplots, loss curves, embedding UMAPs and
spatial expression maps. Every function writes one PNG atomically and returns its path.

Figures are drawn on ``matplotlib.figure.Figure`` objects rather than through pyplot, so no
backend is selected, no window can open and nothing global is left behind.
"""
from __future__ import annotations

import math
import os
import re
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import ResultsError, unknown
from ..extras import require
from .predictions import SlidePredictions, load_predictions, predictions_path
from .results import RunResult, find_results, load_result

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
    from .leaderboard.rows import BoardContext, metric_meta

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
    from .leaderboard import result_sort_key

    return sorted(results, key=result_sort_key)


def _title(results: Sequence[RunResult]) -> str:
    def one(values: Iterable[str]) -> str:
        return ", ".join(sorted(set(values)))

    return f"{one(r.dataset for r in results)} · {one(r.protocol for r in results)} protocol"


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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


def pearson_per_gene(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson r of every column, as the leaderboard scores it (NaN for a constant column)."""
    from ..eval.metrics import pearson

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


def _group_name(result: RunResult) -> str:
    """``{dataset}.{protocol}`` as named (case kept: the leaderboard links figures by this prefix)."""
    return ".".join(re.sub(r"[^A-Za-z0-9._-]+", "-", x) for x in (result.dataset, result.protocol))


def _run_slugs(results: Sequence[RunResult]) -> list[str]:
    """File-name parts: the model where it has one run in the group, else its distinguishing label;
    the config hash is appended where that still clashes (same options, other seed)."""
    models = [r.model for r in results]
    slugs = [slugify(r.model if models.count(r.model) == 1 else label)
             for r, label in zip(results, figure_labels(results, max_len=200))]
    return [f"{s}.{r.config_hash}" if slugs.count(s) > 1 else s for r, s in zip(results, slugs)]


def _check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    for k in kinds:
        if k not in KINDS:
            raise unknown("figure kind", k, KINDS)
    return kinds


def _group_figures(results: Sequence[RunResult], out_dir: Path, kinds: Sequence[str]) -> list[Path]:
    name = _group_name(results[0])
    written = []
    if "box" in kinds:
        written.append(metric_boxplots(results, out_dir / f"{name}.boxplot.png"))
    if "loss" in kinds and any(_histories(r) for r in results):
        written.append(loss_curves(results, out_dir / f"{name}.loss.png"))
    return written


def _run_figures(result: RunResult, path: Path, out_dir: Path, slug: str, kinds: Sequence[str]) -> list[Path]:
    if not {"umap", "spatial"} & set(kinds):
        return []
    pred_file = predictions_path(path)
    if not pred_file.is_file():
        return []
    slides, _ = load_predictions(pred_file)
    prefix = f"{_group_name(result)}.{slug}"
    label = short_label(result)
    written = []
    if "umap" in kinds and _embedded_slide(slides, None) is not None:
        written.append(embedding_umap(slides, out_dir / f"{prefix}.umap.png", label, seed=result.seed))
    if "spatial" in kinds and slides:
        written.append(spatial_maps(slides[0], out_dir / f"{prefix}.spatial.png", label=label))
    return written


def plot_run(results_path: str | os.PathLike, out_dir: str | os.PathLike,
             kinds: Sequence[str] = KINDS) -> list[Path]:
    """Every figure one results file supports; kinds it cannot support are skipped."""
    kinds = _check_kinds(kinds)
    path, out = Path(results_path), Path(out_dir)
    result = load_result(path)
    return _group_figures([result], out, kinds) + _run_figures(result, path, out, slugify(result.model), kinds)


def plot_dir(results_dir: str | os.PathLike, out_dir: str | os.PathLike, dataset: str | None = None,
             protocol: str | None = None, kinds: Sequence[str] = KINDS, seed: int | None = None) -> list[Path]:
    """Figures for every (dataset, protocol) group of a results folder and every run in it
    (only the runs of ``seed`` when given)."""
    kinds = _check_kinds(kinds)
    out = Path(out_dir)
    runs = [(load_result(p), p) for p in find_results(results_dir)]
    if not runs:
        raise ResultsError(f"no results files in {results_dir}; run `stbench run` first")
    runs = [(r, p) for r, p in runs if dataset in (None, r.dataset) and protocol in (None, r.protocol)
            and seed in (None, r.seed)]
    if not runs:
        wanted = " · ".join(x for x in (dataset, protocol, None if seed is None else f"seed {seed}") if x)
        raise ResultsError(f"no results in {results_dir} match {wanted}")
    groups: dict[tuple[str, str], list[tuple[RunResult, Path]]] = {}
    for r, p in runs:
        groups.setdefault((r.dataset, r.protocol), []).append((r, p))
    written: list[Path] = []
    for key in sorted(groups):
        members = groups[key]
        results = [r for r, _ in members]
        written += _group_figures(results, out, kinds)
        for slug, (r, p) in sorted(zip(_run_slugs(results), members), key=lambda m: m[0]):
            written += _run_figures(r, p, out, slug, kinds)
    return written


__all__ = ["best_genes", "embedding_umap", "figure_labels", "leaderboard_order", "loss_curves", "metric_boxplots",
           "pearson_per_gene", "plot_dir", "plot_run", "short_label", "slugify", "spatial_maps"]
