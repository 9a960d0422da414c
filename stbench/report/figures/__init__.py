"""Figures from results and predictions files: metric boxplots, loss curves, embedding UMAPs and
spatial expression maps. Every function writes one PNG atomically and returns its path.

Figures are drawn on ``matplotlib.figure.Figure`` objects rather than through pyplot, so no
backend is selected, no window can open and nothing global is left behind.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from ...errors import ResultsError, unknown
from ..predictions import load_predictions, predictions_path
from ..results import RunResult, find_results, load_result
from .common import KINDS, figure_labels, leaderboard_order, short_label, slugify
from .embeddings import _embedded_slide, embedding_umap
from .metrics import metric_boxplots
from .spatial import best_genes, pearson_per_gene, spatial_maps
from .training import _histories, loss_curves


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
