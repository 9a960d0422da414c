"""Choose model options on the reference slides only: nested leave-one-slide-out validation.

For every outer fold (query slide q) the candidate is run on the reference slides alone, leaving each of
them out in turn (inner folds, strict protocol: genes and Harmony from the inner reference); the query
slide is never read. The score of a candidate is its mean per-gene Pearson over all inner folds. The
option set with the best score is then run once on the outer folds (`stbench run` / `bench`), which is
the number to publish.

    python benchmarks/select_options.py --dataset her2st_C_HVG \\
        --candidate "ridge" --candidate "ridge:alpha=10" --candidate "stnet:freeze_encoder=true,epochs=50"

A candidate ``A | B`` is an ensemble: each member runs as above, and per query slide the members'
predictions are combined as the ``ensemble`` model combines them: z-scored per gene over the slide's spots
(no truth is read) and averaged, so a member with shrunken predictions (ridge, knn) weighs as much as one
with full-scale predictions (ST-Net).
Members are run once and shared between candidates.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np


def inner_datasets(plugins, name: str) -> list[tuple[str, str]]:
    """One registered dataset per outer fold: the outer reference slides only (name ``<dataset>~<query>``)."""
    from stbench.data.catalog_dataset import CatalogDataset

    dataset = plugins.datasets.get(name)
    out = []
    for fold in dataset.folds("default"):
        entry = dataclasses.replace(dataset.entry, name=f"{name}~{'+'.join(fold.query)}", slides=fold.reference,
                                    query=fold.reference[-1:], split="all", expected_spots={})
        inner = CatalogDataset(entry, dataset.reader)
        if entry.name not in plugins.datasets:
            plugins.datasets.add(entry.name, inner, "select_options")
        out.append(("+".join(fold.query), entry.name))
    return out


def parse(candidate: str) -> tuple[str, tuple[str, ...]]:
    model, _, opts = candidate.partition(":")
    return model.strip(), tuple(o.strip() for o in opts.split(",") if o.strip())


def score_member(plugins, model: str, options: tuple[str, ...], dataset: str, seed: int, out: str):
    """One member's inner run: its per-fold Pearson and, per query slide, (truth, predictions)."""
    from stbench.report.predictions import load_predictions, predictions_path
    from stbench.runner import RunRequest, run

    result, path = run(plugins, RunRequest(model, dataset, folds="all", seed=seed, options=options, device="cpu",
                                           save_predictions=True), out)
    slides, _ = load_predictions(predictions_path(path))
    return ([f["scores"]["pearson"]["mean"] for f in result.folds],
            {(s.fold, s.query): (s.genes, s.true, s.pred) for s in slides})


def ensemble_pearson(members: list[dict]) -> list[float]:
    """Per query slide, the mean per-gene Pearson of the members combined as the ``ensemble`` model does."""
    from stbench.eval.metrics import gene_summary, pearson
    from stbench_ensemble.model import combine

    scores = []
    for key in sorted(members[0]):
        genes, true, _ = members[0][key]
        if any(m[key][0] != genes for m in members):
            raise SystemExit(f"ensemble members predict different genes for {key}")
        pred = combine([m[key][2] for m in members])
        scores.append(gene_summary(pearson(true, pred))["mean"])
    return scores


def main() -> None:
    import torch

    from stbench.plugins import get_plugin_manager

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="her2st_C_HVG")
    parser.add_argument("--candidate", action="append", required=True, help="MODEL[:k=v,k=v], or an ensemble MODEL[:...] | MODEL[:...]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--outer", default=None, help="only these outer query slides, comma-separated (cheaper)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plugins = get_plugin_manager()
    inner = inner_datasets(plugins, args.dataset)
    if args.outer:
        inner = [(q, name) for q, name in inner if q in args.outer.split(",")]
    print(f"{'candidate':<64} {'inner Pearson':>13} {'per outer fold':>40} {'s':>6}")
    members: dict[tuple[str, str], tuple[list[float], dict]] = {}
    workdir = tempfile.mkdtemp(prefix="select_options.")
    for candidate in args.candidate:
        t0, per_outer = time.perf_counter(), []
        parts = [parse(c) for c in candidate.split("|")]
        for _, name in inner:
            runs = []
            for model, options in parts:
                key = (f"{model}:{','.join(options)}", name)
                if key not in members:
                    members[key] = score_member(plugins, model, options, name, args.seed, tempfile.mkdtemp(dir=workdir))
                runs.append(members[key])
            per_outer.append(float(np.mean(runs[0][0] if len(runs) == 1 else ensemble_pearson([r[1] for r in runs]))))
        print(f"{candidate:<64} {np.mean(per_outer):>13.4f} {' '.join(f'{v:.3f}' for v in per_outer):>40} "
              f"{time.perf_counter() - t0:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
