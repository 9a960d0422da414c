"""Top-K cosine retrieval and expression aggregation, for models that predict by retrieval.

A query spot's expression is predicted by finding the ``k`` reference embeddings most similar to
the query's embedding (cosine similarity = dot product of L2-normalised rows) and aggregating those
references' expression rows.

Memory. The dense query x reference similarity matrix is never built (20,000 x 100,000 float32 is
8 GB). :func:`topk_cosine` walks the matrix in blocks of ``chunk_size`` queries x
``ref_chunk_size`` references (reference chunks outside, query chunks inside): each block is
computed with one matrix product into a reused buffer and reduced to its exact top-``k`` per
query, which goes into a small candidate store (a few ``k``-column slots per query, merged when
full and at the end). Rows are normalised chunk by chunk as well, so the extra memory is
O(chunk_size x ref_chunk_size + ref_chunk_size x D + Nq x k), independent of Nq x Nr. By default
the block is about :data:`BLOCK_BYTES` (64 MB): 512 queries x 32,768 references.

Ordering and ties. Results are sorted by score descending; equal scores are ordered by reference
index ascending, and when several references tie for the last place the lower indices are kept.
``torch.topk`` alone is not stable, so: each block's ``k + 1`` best values are found with
``torch.topk``; where the ``k``-th and ``k+1``-th values are equal (a tie at the cut) that row is
re-selected exactly with a composite int64 key (order-preserving score bits, then
``2**32 - 1 - index``); candidates from all reference chunks are merged with the same key, which
never ties, and sorted once at the end. ``-0.0`` counts as ``0.0``. For a given input the
result is deterministic, and the tie rule holds whatever the chunk sizes.

Ties are decided on the float32 scores *as computed*. A matrix product may round the same
cosine differently, by about one unit in the last place, depending on the block shape and on a
column's position in the block, so bit-identical reference rows are not guaranteed bit-identical
scores (the dense ``q @ r.T`` has the same property); such near-ties are ordered by their
computed scores. Exactly equal scores, e.g. from exactly representable data or zero rows, always
follow the lower-index rule.

Conventions. Rows with zero norm normalise to all-zero rows: their cosine with everything is 0
(a zero query therefore retrieves references ``0 .. k-1``, all with score 0). ``k`` larger than
the number of references is clamped to it. Non-finite embeddings, mismatched dimensions and an
empty reference raise :class:`~stbench.errors.DataError`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stbench.errors import DataError

#: Memory budget (bytes) for one similarity block / one aggregation block when chunk sizes are
#: not given.
BLOCK_BYTES = 64 * 2**20
#: Default width of a reference chunk (the query chunk is then BLOCK_BYTES / 4 / this).
DEFAULT_REF_CHUNK = 32768

_LOW32 = (1 << 32) - 1


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _resolve_device(device: Any, *arrays: Any):
    torch = _torch()
    if device is not None:
        return torch.device(device)
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def _check_2d(x: Any, name: str) -> Any:
    """Return ``x`` as a 2-D numpy array or tensor without copying."""
    torch = _torch()
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} is not a numeric array ({exc}); pass a float array") from None
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (n_rows, dim), got {x.ndim}-D shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray) and x.dtype.kind not in "fiub":
        raise DataError(f"{name} has dtype {x.dtype}; pass a float array")
    return x


def _rows(x: Any, start: int, stop: int, device) -> Any:
    """Rows ``start:stop`` of ``x`` as a float32 tensor on ``device`` (no copy when already so)."""
    torch = _torch()
    part = x[start:stop]
    if isinstance(part, np.ndarray):
        part = torch.from_numpy(np.ascontiguousarray(part))
    return part.to(device=device, dtype=torch.float32)


def _inverse_norms(x: Any, name: str, device, chunk: int) -> Any:
    """1 / ||row|| for every row (0 for zero rows), computed chunk by chunk; checks finiteness."""
    torch = _torch()
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=device)
    for s in range(0, n, chunk):
        out[s:s + chunk] = torch.linalg.vector_norm(_rows(x, s, s + chunk, device), dim=1)
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise DataError(f"{name} has {bad} row(s) with NaN/inf values (or a norm that overflows float32): the model "
                        "produced non-finite embeddings; if it was trained, training diverged: lower the learning rate")
    return torch.where(out > 0, 1.0 / out, torch.zeros_like(out))


def default_chunk_sizes(n_query: int, n_ref: int, chunk_size: int | None = None,
                        ref_chunk_size: int | None = None, *, block_bytes: int = BLOCK_BYTES) -> tuple[int, int]:
    """The (query, reference) chunk sizes used by :func:`topk_cosine`.

    Unset sizes are derived so that one float32 similarity block is about ``block_bytes``:
    references in chunks of :data:`DEFAULT_REF_CHUNK` (or all of them when fewer), queries in
    chunks of ``block_bytes / 4 / ref_chunk_size``. Sizes are clamped to ``[1, n]``.
    """
    elems = max(1, block_bytes // 4)
    for name, v in (("chunk_size", chunk_size), ("ref_chunk_size", ref_chunk_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise DataError(f"{name} must be a positive integer, got {v!r}")
    if ref_chunk_size is None:
        ref_chunk_size = DEFAULT_REF_CHUNK if chunk_size is None else max(1, elems // int(chunk_size))
    ref_chunk_size = max(1, min(int(ref_chunk_size), max(n_ref, 1)))
    if chunk_size is None:
        chunk_size = max(1, elems // ref_chunk_size)
    chunk_size = max(1, min(int(chunk_size), max(n_query, 1)))
    return chunk_size, ref_chunk_size


# ----------------------------------------------------------------------------------------------
# exact top-k with the (score desc, index asc) order
# ----------------------------------------------------------------------------------------------
def _order_key(scores, idx):
    """int64 key, strictly monotone in (score, -index): larger key = better. ``idx`` < 2**32.

    High 32 bits: the float32 score's bits made order-preserving as a signed int; low 32 bits:
    ``2**32 - 1 - idx``. Keys of distinct (score, index) pairs never tie, so ``torch.topk`` on
    keys is deterministic.
    """
    torch = _torch()
    bits = (scores + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 maps -0.0 to +0.0
    # IEEE floats compare like sign-magnitude ints; flip the magnitude bits of negatives.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.mul_(1 << 32).add_(_LOW32 - idx)


def _decode_key(key):
    """Inverse of :func:`_order_key`: (float32 scores, int64 indices)."""
    torch = _torch()
    idx = _LOW32 - (key & _LOW32)
    bits = key >> 32
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int32)
    return bits.view(torch.float32), idx


def _block_candidates(block, offset: int, k: int, out_s, out_i) -> None:
    """Write the exact top-``k`` (score desc, index asc) of each row of a similarity block.

    ``offset`` is the global index of the block's first column; ``out_s`` / ``out_i`` are
    (rows, k) float32 / int64 views of the candidate store, filled unordered. A block narrower
    than ``k`` fills only its first ``width`` columns; the others keep the -inf the store slot
    holds (slots are -inf from creation and again after each merge).
    """
    torch = _torch()
    rows, width = block.shape
    if width <= k:
        out_s[:, :width] = block
        out_i[:, :width] = torch.arange(offset, offset + width, device=block.device)
        return
    # The k+1 best values are exact; when the k-th and (k+1)-th differ the top-k set is unique.
    vals, pos = torch.topk(block, k + 1, dim=1, largest=True, sorted=True)
    out_s.copy_(vals[:, :k])
    torch.add(pos[:, :k], offset, out=out_i)
    tie = vals[:, k - 1] == vals[:, k]
    if bool(tie.any()):
        # several elements share the last place: re-select those rows by key (lower index wins),
        # in groups so the int64 key temporaries stay about the size of the float block (all at
        # once when the block is small)
        tie_rows = tie.nonzero().squeeze(1)
        local = torch.arange(offset, offset + width, device=block.device)
        step = max(1, rows // 4, min(rows, (1 << 20) // width))
        for s in range(0, tie_rows.numel(), step):
            r = tie_rows[s:s + step]
            sub = _order_key(block.index_select(0, r), local.expand(r.numel(), width))
            sub_s, sub_i = _decode_key(torch.topk(sub, k, dim=1, largest=True, sorted=False).values)
            out_s[r] = sub_s
            out_i[r] = sub_i


def _best_of(store_s, store_i, k: int):
    """The top ``k`` of candidate rows by (score desc, index asc), sorted: (scores, indices)."""
    torch = _torch()
    key = _order_key(store_s, store_i)
    return _decode_key(torch.topk(key, k, dim=1, largest=True, sorted=True).values)


def topk_cosine(query: Any, reference: Any, k: int = 50, *, chunk_size: int | None = None,
                ref_chunk_size: int | None = None, device: Any = None):
    """Top-``k`` references by cosine similarity for every query row, without the dense matrix.

    Parameters
    ----------
    query, reference:
        Float arrays or tensors of shape (Nq, D) and (Nr, D). Any float/int dtype; computed in
        float32. Rows with zero norm are treated as all-zero normalised rows (cosine 0 with all).
    k:
        Neighbours per query; clamped to Nr when larger.
    chunk_size, ref_chunk_size:
        Queries / references per block. Unset sizes follow :func:`default_chunk_sizes` (one block
        of about 64 MB float32). Peak extra memory is O(chunk_size x ref_chunk_size +
        ref_chunk_size x D + Nq x k); inputs that are not float32 are converted chunk by chunk.
    device:
        Where to compute (e.g. ``"cuda"``); default: the device of ``query`` or ``reference`` when
        it is a tensor, else CPU. Rows are moved to the device one chunk at a time.

    Returns
    -------
    (scores, indices):
        torch tensors on ``device`` of shape (Nq, k): float32 cosine scores and int64 reference
        indices, each row sorted by score descending, equal scores by index ascending (the lower
        index wins a tie for the last place). Equal chunk-independent scores give the same result
        for any chunk sizes; see the module notes on last-place rounding of computed scores.
    """
    torch = _torch()
    query = _check_2d(query, "query embeddings")
    reference = _check_2d(reference, "reference embeddings")
    nq, d = query.shape
    nr, dr = reference.shape
    if d != dr:
        raise DataError(f"query and reference embeddings differ in dimension: {d} vs {dr}; "
                        "embed both with the same model")
    if nr == 0:
        raise DataError("reference embeddings are empty (0 rows); retrieval needs at least one reference")
    if nr >= 1 << 32:
        raise DataError(f"too many references ({nr}); at most 2**32 - 1 are supported")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"retrieval k must be a positive integer, got {k!r}")
    k = min(int(k), nr)
    dev = _resolve_device(device, query, reference)
    cq, cr = default_chunk_sizes(nq, nr, chunk_size, ref_chunk_size)

    with torch.no_grad():
        return _topk_blocks(query, reference, k, cq, cr, dev)


def _topk_blocks(query, reference, k: int, cq: int, cr: int, dev):
    """The blocked search behind :func:`topk_cosine` (inputs already checked, sizes resolved)."""
    torch = _torch()
    nq, nr = query.shape[0], reference.shape[0]
    inv_q = _inverse_norms(query, "query embeddings", dev, cq)
    inv_r = _inverse_norms(reference, "reference embeddings", dev, cr)
    # Candidate store: each block's exact top-k per query goes into one k-column slot; slots are
    # merged by key (see _order_key) only when the store is full and once at the end, which keeps
    # the number of small operations per block low. Its size is at most max(one similarity
    # block, 2 x Nq x k scores + indices).
    n_ref_chunks = -(-nr // cr)
    slots = int(min(n_ref_chunks, max(2, (cq * cr * 4) // max(1, nq * k * 12))))
    store_s = torch.full((nq, slots * k), float("-inf"), dtype=torch.float32, device=dev)
    store_i = torch.zeros((nq, slots * k), dtype=torch.int64, device=dev)
    # one flat buffer for the similarity block, reused (a narrower last chunk takes a contiguous
    # prefix of it), so no block-sized allocation is repeated
    buffer = torch.empty(cq * cr, dtype=torch.float32, device=dev)
    out_scores = torch.empty((nq, k), dtype=torch.float32, device=dev)
    out_idx = torch.empty((nq, k), dtype=torch.int64, device=dev)
    slot = 0
    # references outside, queries inside: each reference chunk is normalised once
    for rs in range(0, nr, cr):
        re_ = min(rs + cr, nr)
        if slot == slots:  # store full: merge every query's candidates into slot 0
            for qs in range(0, nq, cq):
                best_s, best_i = _best_of(store_s[qs:qs + cq], store_i[qs:qs + cq], k)
                store_s[qs:qs + cq, :k] = best_s
                store_i[qs:qs + cq, :k] = best_i
            store_s[:, k:] = float("-inf")  # drop the merged copies (no duplicate keys)
            slot = 1
        rn_t = (_rows(reference, rs, re_, dev) * inv_r[rs:re_, None]).T
        cols = slice(slot * k, (slot + 1) * k)
        for qs in range(0, nq, cq):
            qe = min(qs + cq, nq)
            qn = _rows(query, qs, qe, dev) * inv_q[qs:qe, None]
            sim = buffer[: (qe - qs) * (re_ - rs)].view(qe - qs, re_ - rs)
            torch.mm(qn, rn_t, out=sim)  # the only similarity block: (chunk_size, ref_chunk_size)
            _block_candidates(sim, rs, k, store_s[qs:qe, cols], store_i[qs:qe, cols])
        del rn_t
        slot += 1
    for qs in range(0, nq, cq):
        out_scores[qs:qs + cq], out_idx[qs:qs + cq] = _best_of(store_s[qs:qs + cq], store_i[qs:qs + cq], k)
    return out_scores, out_idx
