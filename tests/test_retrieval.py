"""Chunked top-K cosine retrieval and aggregation (stbench.nn.retrieval) against brute force."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from stbench.errors import DataError, UnknownNameError
from stbench.nn.retrieval import (
    BLOCK_BYTES,
    aggregate,
    default_chunk_sizes,
    predict_by_retrieval,
    topk_cosine,
)

@pytest.fixture(autouse=True)
def _one_thread():
    # the matrices here are tiny; a multi-threaded BLAS call on a busy machine can stall for a
    # scheduler tick per call, which would make these tests slow, not different
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CHUNKS = [(None, None), (1, 1), (5, 7), (4, 13), (23, 97), (100, 1000), (23, 50), (7, 96)]


# ------------------------------------------------------------------------------------------
# brute force: dense float64 cosine matrix + stable sort by (-score, index)
# ------------------------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def brute_force(q, r, k):
    sim = _normalise(q) @ _normalise(r).T
    k = min(k, sim.shape[1])
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # stable: equal scores keep index order
    return np.take_along_axis(sim, order, axis=1), order


def _random_case(seed: int, nq: int = 23, nr: int = 97, d: int = 16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(nq, d)).astype(np.float32)
    r = rng.normal(size=(nr, d)).astype(np.float32)
    return q, r


def lattice(rng, n: int, d: int = 32, nonzero: int = 16) -> np.ndarray:
    """Rows with ``nonzero`` entries of +-1 (norm 4): normalised entries are +-0.25 exactly, so
    every cosine is a multiple of 1/16 computed without rounding, whatever the summation order;
    many cosines tie exactly."""
    x = np.zeros((n, d), np.float32)
    for i in range(n):
        cols = rng.choice(d, size=nonzero, replace=False)
        x[i, cols] = rng.choice([-1.0, 1.0], size=nonzero)
    return x


# ------------------------------------------------------------------------------------------
# top-k against brute force
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", CHUNKS)
def test_chunked_topk_equals_brute_force(chunks):
    q, r = _random_case(0)
    exact = _normalise(q) @ _normalise(r).T
    # precondition on the data: no two cosines of a query within 4e-6, more than twice the
    # float32 rounding bound of a 16-term dot product (~16 x 6e-8 plus the normalisation), so no
    # summation order can reorder them and the indices must match exactly
    gaps = np.diff(np.sort(exact, axis=1), axis=1)
    assert gaps.min() > 4e-6
    cq, cr = chunks
    for k in (1, 5, 50, 96, 97):
        want_s, want_i = brute_force(q, r, k)
        s, i = topk_cosine(q, r, k, chunk_size=cq, ref_chunk_size=cr)
        assert s.dtype == torch.float32 and i.dtype == torch.int64
        assert tuple(i.shape) == (q.shape[0], k)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cr, k", [(18, 2), (24, 2), (27, 3), (3, 5)])
def test_candidate_store_merges(cr, k):
    # with a block big relative to Nq x k the per-block candidates are kept in several slots and
    # merged only when the slots run out; these sizes merge mid-way and end with a partly
    # refilled store (stale candidates there would duplicate indices)
    q, r = _random_case(0)
    s, i = topk_cosine(q, r, k, chunk_size=23, ref_chunk_size=cr)
    want_s, want_i = brute_force(q, r, k)
    np.testing.assert_array_equal(i.numpy(), want_i)
    assert all(len(set(row)) == k for row in i.tolist())


def test_inputs_as_tensors_float64_and_lists():
    q, r = _random_case(0)
    want_s, want_i = brute_force(q, r, 9)
    for qq, rr in [(torch.from_numpy(q), torch.from_numpy(r)), (q.astype(np.float64), r.astype(np.float64)),
                   (q.tolist(), r.tolist())]:
        s, i = topk_cosine(qq, rr, 9, chunk_size=6, ref_chunk_size=10)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, atol=1e-6)


@pytest.mark.parametrize("chunks", [(None, None), (1, 1), (5, 7), (23, 50), (60, 3), (7, 96)])
def test_exact_ties_lower_index_first(chunks):
    rng = np.random.default_rng(3)
    base = lattice(rng, 40)
    # duplicate rows spread over the reference, so duplicate groups straddle chunk boundaries
    r = base[rng.integers(0, 12, size=97)]
    q = lattice(rng, 23)
    exact = _normalise(q) @ _normalise(r).T
    assert np.array_equal(exact * 16, np.round(exact * 16))  # cosines are exact multiples of 1/16
    assert all(len(np.unique(row)) < 40 for row in exact)  # heavy ties in every row
    cq, cr = chunks
    for k in (1, 3, 10, 97):
        want_s, want_i = brute_force(q, r, k)
        s, i = topk_cosine(q, r, k, chunk_size=cq, ref_chunk_size=cr)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_array_equal(s.numpy(), want_s.astype(np.float32))
        # the rule itself: descending scores, ascending index within equal scores
        s_, i_ = s.numpy(), i.numpy()
        assert np.all(np.diff(s_, axis=1) <= 0)
        same = np.diff(s_, axis=1) == 0
        assert np.all(np.diff(i_, axis=1)[same] > 0)


def test_identical_references_across_chunk_boundaries():
    # 10 copies of one row: every query sees 10 equal scores; the lowest indices must win the
    # last places whichever chunk they fall in
    r = np.tile(np.eye(8, dtype=np.float32)[2], (10, 1))
    r = np.vstack([r, np.eye(8, dtype=np.float32)[5:6]])  # index 10: a different row
    q = np.array([[0.0, 0.0, 1.0, 0, 0, 0, 0, 0], [0.0, 0.0, 0.0, 0, 0, 1.0, 0, 0]], np.float32)
    for cq, cr in [(1, 1), (1, 3), (2, 4), (2, 7), (2, 11), (None, None)]:
        s, i = topk_cosine(q, r, 4, chunk_size=cq, ref_chunk_size=cr)
        assert i[0].tolist() == [0, 1, 2, 3]
        assert s[0].tolist() == [1.0, 1.0, 1.0, 1.0]
        assert i[1].tolist() == [10, 0, 1, 2]  # best match, then the zero-score tie by index
        assert s[1].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_negative_zero_ties_with_zero():
    # -0.0 and +0.0 are one score: equal keys for equal indices, so the index decides
    from stbench.nn.retrieval import _decode_key, _order_key

    scores = torch.tensor([[-0.0, 0.0, -0.0, 1e-30, -1e-30]])
    idx = torch.tensor([[3, 3, 1, 3, 0]])
    key = _order_key(scores, idx)
    assert key[0, 0] == key[0, 1] and key[0, 2] > key[0, 0]  # lower index wins the 0 tie
    assert key[0, 3] > key[0, 2] > key[0, 0] > key[0, 4]
    dec_s, dec_i = _decode_key(key)
    assert dec_i.tolist() == idx.tolist()
    assert torch.equal(dec_s, scores + 0.0)  # bit-exact round trip, -0.0 canonicalised
    assert not torch.signbit(dec_s[0, :3]).any()
    # end to end: products that are -0.0 (or +0.0, depending on the kernel) tie with +0.0
    q = np.array([[-1.0, 0.0]], np.float32)
    r = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    for cr in (1, 2, 4):
        s, i = topk_cosine(q, r, 4, ref_chunk_size=cr)
        assert i[0].tolist() == [0, 1, 2, 3]
        assert s[0, :3].tolist() == [0.0, 0.0, 0.0] and not torch.signbit(s[0, :3]).any()


# ------------------------------------------------------------------------------------------
# zero rows, k clamping, errors
# ------------------------------------------------------------------------------------------
def test_zero_norm_rows():
    q, r = _random_case(1, nq=6, nr=30)
    q[2] = 0.0
    r[[4, 17]] = 0.0
    for cq, cr in [(None, None), (4, 7), (1, 1)]:
        s, i = topk_cosine(q, r, 30, chunk_size=cq, ref_chunk_size=cr)
        want_s, want_i = brute_force(q, r, 30)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, atol=1e-6)
        assert torch.all(s[2] == 0) and i[2].tolist() == list(range(30))  # zero query: all tie at 0
        for row in range(6):  # zero references score exactly 0 with every query
            pos = {int(x): j for j, x in enumerate(i[row])}
            assert s[row, pos[4]] == 0 and s[row, pos[17]] == 0
        assert torch.isfinite(s).all()


def test_k_larger_than_reference_is_clamped():
    q, r = _random_case(2, nq=5, nr=7)
    s, i = topk_cosine(q, r, 50, chunk_size=2, ref_chunk_size=3)
    assert tuple(s.shape) == tuple(i.shape) == (5, 7)
    assert sorted(i[0].tolist()) == list(range(7))
    want_s, want_i = brute_force(q, r, 7)
    np.testing.assert_array_equal(i.numpy(), want_i)


def test_empty_query():
    s, i = topk_cosine(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32), 2)
    assert tuple(s.shape) == tuple(i.shape) == (0, 2)


@pytest.mark.parametrize("q, r, k, match", [
    (np.ones((3, 4)), np.ones((5, 6)), 2, "differ in dimension: 4 vs 6"),
    (np.ones((3, 4)), np.ones((0, 4)), 2, "reference embeddings are empty"),
    (np.ones(4), np.ones((5, 4)), 2, "must be 2-D"),
    (np.ones((3, 4)), np.ones((5, 4)), 0, "positive integer"),
    (np.array([[1.0, np.nan]]), np.ones((5, 2)), 2, "NaN/inf"),
    (np.ones((3, 2)), np.array([[1.0, np.inf]] * 5), 2, "NaN/inf"),
])
def test_errors(q, r, k, match):
    with pytest.raises(DataError, match=match) as err:
        topk_cosine(q, r, k)
    assert "\n" not in str(err.value)


def test_default_chunk_sizes_fit_the_budget():
    cq, cr = default_chunk_sizes(20000, 100000)
    assert cq * cr * 4 <= BLOCK_BYTES and cq >= 64 and cr >= 4096
    assert default_chunk_sizes(10, 20) == (10, 20)
    assert default_chunk_sizes(1000, 1000, 7, None)[0] == 7
    with pytest.raises(DataError, match="chunk_size"):
        default_chunk_sizes(10, 10, 0)


# ------------------------------------------------------------------------------------------
# memory bound: no op may create a tensor of the dense (Nq x Nr) size
# ------------------------------------------------------------------------------------------
class _LargestTensor:
    """Records the largest tensor produced by any torch op (torch dispatch) and the peak of
    Python/numpy allocations (tracemalloc) while active."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        spy = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.numel() > spy.largest:
                        spy.largest, spy.op, spy.shape = t.numel(), str(func), tuple(t.shape)
                return out

        self.mode = Mode()
        self.largest = 0
        with self.mode:  # the first dispatch imports torch internals: keep that out of tracemalloc
            torch.ones(1) + 1
        self.largest, self.op, self.shape, self.numpy_peak = 0, None, None, 0

    def __enter__(self):
        self.mode.__enter__()
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.mode.__exit__(*exc)


def _memory_case():
    rng = np.random.default_rng(5)
    nq, nr, d, k = 400, 3000, 8, 5
    return (torch.from_numpy(rng.normal(size=(nq, d)).astype(np.float32)),
            torch.from_numpy(rng.normal(size=(nr, d)).astype(np.float32)), k)


def test_spy_detects_a_dense_similarity_matrix():
    q, r, k = _memory_case()
    with _LargestTensor() as spy:
        torch.topk(torch.nn.functional.normalize(q) @ torch.nn.functional.normalize(r).T, k, dim=1)
    assert spy.largest >= q.shape[0] * r.shape[0]
    with _LargestTensor() as spy:
        np.argsort(-(q.numpy() @ r.numpy().T), axis=1)[:, :k]
    assert spy.numpy_peak >= q.shape[0] * r.shape[0] * 4


@pytest.mark.parametrize("cq, cr", [(64, 256), (50, 333), (400, 16), (1, 3000)])
def test_no_tensor_larger_than_one_block(cq, cr):
    q, r, k = _memory_case()
    (nq, d), nr = q.shape, r.shape[0]
    with _LargestTensor() as spy:
        s, i = topk_cosine(q, r, k, chunk_size=cq, ref_chunk_size=cr)
    # one block, the inputs' own size, 2 x (Nq x k) candidates and the norms are allowed; the
    # dense matrix is 1.2M elements, 10x more than any allowance here
    allowed = max(cq * cr, 2 * nq * k, nr * d, nq * d, nr, nq)
    assert allowed * 10 <= nq * nr
    assert spy.largest <= allowed, (spy.op, spy.shape)
    assert spy.numpy_peak < nq * nr * 4 // 10  # no dense matrix built with numpy either
    want_s, want_i = brute_force(q.numpy(), r.numpy(), k)
    np.testing.assert_array_equal(i.numpy(), want_i)


def test_aggregate_memory_is_chunked():
    rng = np.random.default_rng(6)
    nq, nr, k, g, d = 300, 200, 20, 64, 8
    idx = torch.from_numpy(rng.integers(0, nr, size=(nq, k)))
    vals = rng.normal(size=(nr, g)).astype(np.float32)
    qe, re = rng.normal(size=(nq, d)), rng.normal(size=(nr, d))
    for method in ("mean", "weighted"):
        with _LargestTensor() as spy:
            aggregate(idx, None, vals, method, query_emb=qe, reference_emb=re, chunk_size=16)
        assert spy.largest <= max(nq * g, nq * k, nr * g, nr * d, 16 * k * d), (method, spy.op, spy.shape)
        assert spy.largest < nq * k * g


# ------------------------------------------------------------------------------------------
# aggregation against a direct loop
# ------------------------------------------------------------------------------------------
def loop_aggregate(indices, values, method, q_emb=None, r_emb=None):
    out = np.zeros((indices.shape[0], values.shape[1]))
    for i in range(indices.shape[0]):
        rows = indices[i]
        if method == "mean":
            out[i] = values[rows].mean(axis=0)
        elif method == "top1":
            out[i] = values[rows[0]]
        else:  # BLEEP's weighted average, written as in its inference script
            a = np.sum((r_emb[rows[0], :] - q_emb[i, :]) ** 2)
            w = np.exp(-(np.sum((r_emb[rows, :] - q_emb[i, :]) ** 2, axis=1) - a + 1))
            out[i] = np.average(values[rows], axis=0, weights=w)
    return out


@pytest.mark.parametrize("method", ["mean", "top1", "weighted"])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_aggregate_equals_loop(method, chunk):
    rng = np.random.default_rng(7)
    nq, nr, d, g, k = 9, 40, 6, 5, 8
    q_emb = rng.normal(size=(nq, d)).astype(np.float32) * 0.5
    r_emb = rng.normal(size=(nr, d)).astype(np.float32) * 0.5
    values = rng.gamma(2.0, size=(nr, g)).astype(np.float32)
    scores, idx = topk_cosine(q_emb, r_emb, k)
    want = loop_aggregate(idx.numpy(), values.astype(np.float64), method, q_emb.astype(np.float64),
                          r_emb.astype(np.float64))
    got = aggregate(idx, scores, values, method, query_emb=q_emb, reference_emb=r_emb, chunk_size=chunk)
    assert isinstance(got, np.ndarray) and got.shape == (nq, g) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # tensors in, tensor out; float64 values keep float64
    got_t = aggregate(idx, scores, torch.from_numpy(values.astype(np.float64)), method,
                      query_emb=torch.from_numpy(q_emb), reference_emb=torch.from_numpy(r_emb))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-9, atol=1e-9)
    # the one call models use
    pred = predict_by_retrieval(q_emb, r_emb, values, k=k, method=method, chunk_size=4)
    assert pred.dtype == np.float32 and pred.shape == (nq, g)
    np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-6)


def test_weighted_does_not_overflow_where_bleeps_formula_does():
    # the cosine top-1 key is far from the query in Euclidean distance (large norm), another key
    # is much closer: exp(-(d_j - a + 1)) overflows; the softmax form does not
    q = np.array([[1.0, 0.0]])
    r = np.array([[100.0, 1.0], [1.0, 0.5], [0.5, 0.9]])
    values = np.array([[1.0], [2.0], [3.0]])
    _, idx = topk_cosine(q, r, 3)
    assert idx[0, 0] == 0
    with np.errstate(over="ignore", invalid="ignore"):
        bleep = loop_aggregate(idx.numpy(), values, "weighted", q, r)
    assert not np.isfinite(bleep).all()
    got = aggregate(idx, None, values, "weighted", query_emb=q, reference_emb=r)
    d = ((r[idx[0].numpy()] - q[0]) ** 2).sum(1)
    w = np.exp(-(d - d.min()))
    np.testing.assert_allclose(got[0], (w / w.sum()) @ values[idx[0].numpy()], rtol=1e-12)


def test_aggregate_errors():
    idx = np.array([[0, 1]])
    vals = np.ones((3, 2))
    with pytest.raises(UnknownNameError, match="aggregation method 'median'"):
        aggregate(idx, None, vals, "median")
    with pytest.raises(DataError, match="needs query_emb and reference_emb"):
        aggregate(idx, None, vals, "weighted")
    with pytest.raises(DataError, match="out of range"):
        aggregate(np.array([[0, 3]]), None, vals)
    with pytest.raises(DataError, match="scores shape"):
        aggregate(idx, np.ones((1, 3)), vals)
    with pytest.raises(DataError, match="chunk_size"):
        aggregate(idx, None, vals, chunk_size=0)
    with pytest.raises(DataError, match="one expression row per reference"):
        predict_by_retrieval(np.ones((2, 4)), np.ones((3, 4)), np.ones((4, 2)))
