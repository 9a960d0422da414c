"""Expression preprocessing: log-normalisation, HVG / HEG gene sets, Harmony; two protocols.

``paper`` reproduces the seed paper's published preprocessing (specs/protocol.md): genes are selected and Harmony is run over ALL slides of the fold,
the query included, and the query's truth is its Harmony-corrected expression. ``strict`` (the
leaderboard default) selects genes and runs Harmony on the reference slides only; the query's truth
is its own log-normalised expression. Genes are matched by symbol; the selected genes are kept in
one fixed, recorded order (alphabetical).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError

log = logging.getLogger("stbench")
PREPROCESS_VERSION = "1"


@dataclass(frozen=True)
class GeneSelection:
    set: str = "hvg"
    n_per_slide: int | None = 1000


@dataclass(frozen=True, eq=False)
class PreparedExpression:
    genes: tuple[str, ...]
    matrices: Mapping[str, np.ndarray]
    barcodes: Mapping[str, np.ndarray]
    info: Mapping[str, Any] = field(default_factory=dict)


def log_normalise(adata: Any) -> Any:
    """A copy without zero-count spots, ``normalize_total`` (median target) then ``log1p``."""
    import scanpy as sc
    import scipy.sparse as sp

    totals = np.asarray(adata.X.sum(1)).ravel()
    out = adata[totals > 0].copy()
    out.X = sp.csr_matrix(out.X, dtype=np.float32) if sp.issparse(out.X) else np.asarray(out.X, dtype=np.float32)
    if out.n_obs == 0:
        raise DataError(f"slide '{adata.obs['slide'].iloc[0] if adata.n_obs else '?'}' has no spot with counts")
    sc.pp.normalize_total(out)
    sc.pp.log1p(out)
    out.uns["stbench_n_zero_count_spots"] = int((totals == 0).sum())
    return out


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def select_genes(lognorm: Mapping[str, Any], candidates: Sequence[str], selection: GeneSelection) -> list[str]:
    """Union over slides of each slide's top genes among ``candidates``, in alphabetical order."""
    import scanpy as sc

    if selection.set == "all":
        return sorted(candidates)
    chosen: set[str] = set()
    for slide, ad in lognorm.items():
        sub = ad[:, list(candidates)]
        n = min(int(selection.n_per_slide or 0), sub.n_vars)
        if selection.set == "hvg":
            sub = sub.copy()
            sc.pp.highly_variable_genes(sub, n_top_genes=n, flavor="seurat")
            chosen |= set(sub.var_names[sub.var["highly_variable"].to_numpy()])
        elif selection.set == "heg":
            mean = np.asarray(sub.X.mean(0)).ravel()
            nonzero = np.asarray((sub.X != 0).sum(0)).ravel() > 0
            order = np.lexsort((np.arange(len(mean)), -mean))
            order = order[nonzero[order]][:n]
            chosen |= set(sub.var_names[order])
        else:
            raise DataError(f"unknown gene set '{selection.set}' (use hvg, heg or all)")
    return sorted(chosen)


def harmonise(matrices: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Harmony on the concatenated spots x genes matrix, batch = slide; split back per slide."""
    if len(matrices) < 2:
        return dict(matrices)
    import harmonypy
    import pandas as pd

    slides = list(matrices)
    stacked = np.concatenate([matrices[s] for s in slides]).astype(np.float64)
    batch = pd.DataFrame({"slide": np.repeat(slides, [len(matrices[s]) for s in slides])})
    n, g = stacked.shape
    z = np.asarray(harmonypy.run_harmony(stacked, batch, "slide", random_state=seed, verbose=False).Z_corr)
    if z.shape == (g, n) and n != g:
        z = z.T
    if z.shape != (n, g):
        raise DataError(f"harmonypy returned shape {z.shape}, expected ({n}, {g}) spots x genes")
    out, start = {}, 0
    for s in slides:
        out[s] = z[start:start + len(matrices[s])].astype(np.float32)
        start += len(matrices[s])
    return out


#: Principal components Harmony corrects in the ``pca`` mode (as scanpy.external.pp.harmony_integrate uses).
HARMONY_PCS = 50


def harmonise_pca(matrices: Mapping[str, np.ndarray], seed: int = 0, n_components: int = HARMONY_PCS) -> dict[str, np.ndarray]:
    """Harmony on principal components, as Harmony is designed to be used (Korsunsky et al. 2019), with
    the correction mapped back to genes: PCA of the stacked spots x genes matrix (fitted on these slides),
    Harmony on the PC scores (batch = slide), and corrected expression = expression + (corrected scores -
    scores) @ components. Memory: the matrix, one centred copy for the PCA, and N x 50 scores, instead of
    the float64 spots x genes matrices of :func:`harmonise`; the part of the expression outside the 50
    components is left as it is."""
    if len(matrices) < 2:
        return dict(matrices)
    import harmonypy
    import pandas as pd
    from sklearn.decomposition import PCA

    slides = list(matrices)
    sizes = [len(matrices[s]) for s in slides]
    stacked = np.concatenate([np.asarray(matrices[s], dtype=np.float32) for s in slides])
    k = max(1, min(n_components, stacked.shape[0] - 1, stacked.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(stacked)
    scores = pca.transform(stacked).astype(np.float64)
    batch = pd.DataFrame({"slide": np.repeat(slides, sizes)})
    corrected = np.asarray(harmonypy.run_harmony(scores, batch, "slide", random_state=seed, verbose=False).Z_corr)
    if corrected.shape == (k, len(scores)) and k != len(scores):
        corrected = corrected.T
    shift = (corrected - scores).astype(np.float32)
    out, start = {}, 0
    for s, n in zip(slides, sizes):
        out[s] = (stacked[start:start + n] + shift[start:start + n] @ pca.components_.astype(np.float32)).astype(np.float32)
        start += n
    return out


def _columns(ad: Any, genes: Sequence[str]) -> tuple[np.ndarray, int]:
    """Dense (spots x genes) in ``genes`` order; genes absent from the slide are zeros (counted)."""
    idx = ad.var_names.get_indexer(list(genes))
    present = idx >= 0
    out = np.zeros((ad.n_obs, len(genes)), dtype=np.float32)
    if present.any():
        out[:, present] = _dense(ad.X[:, idx[present]])
    return out, int((~present).sum())


def prepare_expression(raw: Mapping[str, Any], reference: Sequence[str], query: Sequence[str], protocol: str,
                       selection: GeneSelection, harmony: bool | str, seed: int = 0) -> PreparedExpression:
    """Per-slide (spots x genes) float32 matrices in the protocol's expression space."""
    lognorm = {s: log_normalise(raw[s]) for s in [*reference, *query]}
    chooser = list(reference) if protocol == "strict" else [*reference, *query]
    candidates = set(lognorm[chooser[0]].var_names)
    for s in chooser[1:]:
        candidates &= set(lognorm[s].var_names)
    if not candidates:
        raise DataError(f"slides {', '.join(chooser)} share no gene symbol; check that they come from one species/panel")
    genes = select_genes({s: lognorm[s] for s in chooser}, sorted(candidates), selection)
    if not genes:
        raise DataError("gene selection kept no gene; check genes.n_per_slide in the catalogue")
    matrices, missing = {}, {}
    for s in lognorm:
        matrices[s], missing[s] = _columns(lognorm[s], genes)
    if harmony:
        correct = harmonise_pca if harmony == "pca" else harmonise
        corrected = correct({s: matrices[s] for s in chooser}, seed)
        matrices.update(corrected)
    for s in query:
        if missing[s]:
            log.info("query slide %s lacks %d of %d genes (zero counts there)", s, missing[s], len(genes))
    info = {
        "gene_set": selection.set, "n_per_slide": selection.n_per_slide, "n_genes": len(genes),
        "normalisation": "normalize_total(median)+log1p", "harmony": bool(harmony),
        **({"harmony_mode": f"pca{HARMONY_PCS}"} if harmony == "pca" else {}),
        "harmony_scope": ("all slides, query included" if protocol == "paper" else "reference slides") if harmony else None,
        "gene_selection_scope": "all slides, query included" if protocol == "paper" else "reference slides",
        "zero_count_spots": {s: int(lognorm[s].uns["stbench_n_zero_count_spots"]) for s in lognorm},
        "query_genes_missing": {s: int(missing[s]) for s in query},
        "preprocess_version": PREPROCESS_VERSION,
    }
    return PreparedExpression(tuple(genes), matrices, {s: np.asarray(lognorm[s].obs_names) for s in lognorm}, info)
