"""Aggregating the expression of retrieved reference spots into a prediction (mean, top-1, or
inverse-distance weighting as in Xie et al. 2023), chunk by chunk, and :func:`predict_by_retrieval`."""
from __future__ import annotations

from typing import Any

import numpy as np

from stbench.errors import DataError, unknown

from .topk import BLOCK_BYTES, _check_2d, _torch, topk_cosine

#: Aggregation methods understood by :func:`aggregate`.
AGGREGATIONS = ("mean", "top1", "weighted")


def aggregate(indices: Any, scores: Any, reference_values: Any, method: str = "mean", *,
              query_emb: Any = None, reference_emb: Any = None, chunk_size: int | None = None):
    """Aggregate the matched references' values into one prediction per query.

    ``indices`` (Nq x K, int) and ``scores`` (Nq x K) come from :func:`topk_cosine` (rows sorted
    best first); ``scores`` is only checked for shape, none of the methods weights by cosine.
    ``reference_values`` is (Nr x G). ``method`` (one of :data:`AGGREGATIONS`) picks
    :func:`aggregate_mean`, :func:`aggregate_top1` or :func:`aggregate_weighted` (which needs the
    unnormalised ``query_emb`` and ``reference_emb``).

    Computed in query chunks (about :data:`BLOCK_BYTES` per chunk, or ``chunk_size`` queries) and
    accumulated match by match, so no (Nq x K x G) array is built. Runs on the device of
    ``reference_values``; returns a numpy array when ``reference_values`` is numpy, else a tensor,
    of shape (Nq x G) and dtype float64 for float64 values, float32 otherwise.
    """
    torch = _torch()
    if method not in AGGREGATIONS:
        raise unknown("aggregation method", str(method), AGGREGATIONS)
    values = _check_2d(reference_values, "reference values")
    as_numpy = isinstance(values, np.ndarray)
    vals = torch.from_numpy(np.ascontiguousarray(values)) if as_numpy else values
    if vals.dtype not in (torch.float32, torch.float64):
        vals = vals.to(torch.float32)
    idx = _check_indices(indices, scores, vals)
    nq, kk = idx.shape
    q_emb, r_emb = (_check_weighted_embeddings(query_emb, reference_emb, nq, vals) if method == "weighted"
                    else (None, None))
    chunk_size = _aggregation_chunk(chunk_size, vals.shape[1], kk, q_emb)
    out = torch.empty((nq, vals.shape[1]), dtype=vals.dtype, device=vals.device)
    with torch.no_grad():
        for s in range(0, nq, chunk_size):
            e = min(s + chunk_size, nq)
            if method == "weighted":
                out[s:e] = aggregate_weighted(vals, idx[s:e], q_emb[s:e], r_emb)
            else:
                out[s:e] = (aggregate_mean if method == "mean" else aggregate_top1)(vals, idx[s:e])
    return out.cpu().numpy() if as_numpy else out


def aggregate_mean(values: Any, indices: Any) -> Any:
    """Uniform mean of the K matched rows: (n, G) from ``values`` (Nr x G) and ``indices`` (n x K)
    on its device, summed match by match in the values' dtype."""
    acc = values.index_select(0, indices[:, 0]).clone()
    for j in range(1, indices.shape[1]):
        acc.add_(values.index_select(0, indices[:, j]))
    return acc.div_(indices.shape[1])


def aggregate_top1(values: Any, indices: Any) -> Any:
    """The first (best) match's row: (n, G)."""
    return values.index_select(0, indices[:, 0])


def aggregate_weighted(values: Any, indices: Any, query_emb: Any, reference_emb: Any) -> Any:
    """Distance-weighted mean, as in the inference script of Xie et al. 2023: with ``d_j = ||k_j - q||^2``
    on the *unnormalised* embeddings (``query_emb``: the n queries' rows, numpy or tensor;
    ``reference_emb``: all references, a tensor on the values' device) and ``a`` the ``d`` of the
    top-1 match, ``w_j = exp(-(d_j - a + 1))`` and the prediction is ``sum_j w_j v_j / sum_j w_j``.
    The normalised weights equal ``softmax(-d)``, which is how they are computed (in float64): the
    same values, without the published formula's overflow when some ``d_j`` is far below ``a``."""
    torch = _torch()
    n, kk = indices.shape
    dev = values.device
    q = torch.as_tensor(np.ascontiguousarray(query_emb) if isinstance(query_emb, np.ndarray) else query_emb)
    q = q.to(device=dev, dtype=torch.float64)
    keys = reference_emb.index_select(0, indices.reshape(-1)).to(torch.float64).reshape(n, kk, -1)
    dist = (keys - q[:, None, :]).square_().sum(dim=2)  # (n, K), unnormalised
    w = torch.softmax(-dist, dim=1)  # == exp(-(d - a + 1)) / sum(...)
    acc = torch.zeros((n, values.shape[1]), dtype=torch.float64, device=dev)
    for j in range(kk):
        acc.addcmul_(values.index_select(0, indices[:, j]).to(torch.float64), w[:, j:j + 1])
    return acc.to(values.dtype)


def _check_indices(indices: Any, scores: Any, vals: Any) -> Any:
    """``indices`` as an int64 tensor on the values' device, checked against ``scores`` and the rows."""
    torch = _torch()
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.ndim != 2:
        raise DataError(f"indices must be 2-D (n_query, k), got shape {tuple(idx.shape)}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise DataError(f"indices must be integers, got {idx.dtype}")
    idx = idx.to(device=vals.device, dtype=torch.int64)
    nq, kk = idx.shape
    nr = vals.shape[0]
    if scores is not None and tuple(np.shape(scores)) != (nq, kk):
        raise DataError(f"scores shape {tuple(np.shape(scores))} differs from indices shape {(nq, kk)}")
    if nq and kk == 0:
        raise DataError("indices have no matches per query (k = 0); nothing to aggregate")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= nr):
        raise DataError(f"indices out of range for {nr} reference rows "
                        f"(min {int(idx.min())}, max {int(idx.max())}); pass the matching reference values")
    return idx


def _check_weighted_embeddings(query_emb: Any, reference_emb: Any, nq: int, vals: Any) -> tuple[Any, Any]:
    """(query embeddings as given, reference embeddings as a tensor on the values' device)."""
    if query_emb is None or reference_emb is None:
        raise DataError("method 'weighted' needs query_emb and reference_emb (unnormalised embeddings)")
    q_emb = _check_2d(query_emb, "query embeddings")
    r_emb = _check_2d(reference_emb, "reference embeddings")
    nr = vals.shape[0]
    if q_emb.shape[0] != nq or r_emb.shape[0] != nr or q_emb.shape[1] != r_emb.shape[1]:
        raise DataError(f"weighted aggregation: query_emb {tuple(q_emb.shape)} / reference_emb "
                        f"{tuple(r_emb.shape)} do not match indices ({nq} queries) and values ({nr} references)")
    return q_emb, _torch().as_tensor(r_emb).to(device=vals.device)


def _aggregation_chunk(chunk_size: int | None, n_genes: int, k: int, q_emb: Any) -> int:
    """Queries per aggregation chunk: ``chunk_size`` (checked) or about :data:`BLOCK_BYTES` worth."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size is None:
        per_query = max(n_genes, k * (q_emb.shape[1] if q_emb is not None else 1)) * 8
        chunk_size = max(1, BLOCK_BYTES // per_query)
    return chunk_size


def predict_by_retrieval(query_emb: Any, reference_emb: Any, reference_values: Any, k: int = 50,
                         method: str = "mean", chunk_size: int | None = None, *,
                         ref_chunk_size: int | None = None, device: Any = None) -> np.ndarray:
    """Predict (Nq x G) float32 expression for the queries: top-``k`` cosine retrieval + aggregation.

    ``query_emb`` (Nq x D) and ``reference_emb`` (Nr x D) are the unnormalised embeddings,
    ``reference_values`` (Nr x G) the references' expression; ``method`` is one of
    :data:`AGGREGATIONS`. See :func:`topk_cosine` (chunking, tie rule, ``k`` clamped to Nr) and
    :func:`aggregate`.
    """
    if method not in AGGREGATIONS:
        raise unknown("aggregation method", str(method), AGGREGATIONS)
    values = _check_2d(reference_values, "reference values")
    ref = _check_2d(reference_emb, "reference embeddings")
    if values.shape[0] != ref.shape[0]:
        raise DataError(f"reference values have {values.shape[0]} rows but reference embeddings have "
                        f"{ref.shape[0]}; pass one expression row per reference embedding")
    scores, indices = topk_cosine(query_emb, ref, k, chunk_size=chunk_size,
                                  ref_chunk_size=ref_chunk_size, device=device)
    if not isinstance(values, np.ndarray):
        values = values.detach()
    else:
        indices, scores = indices.cpu(), scores.cpu()
    pred = aggregate(indices, scores, values, method, query_emb=query_emb, reference_emb=ref)
    if not isinstance(pred, np.ndarray):
        pred = pred.detach().cpu().numpy()
    return np.ascontiguousarray(pred, dtype=np.float32)
