import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from stbench.errors import DataError
from stbench.data.preprocess import GeneSelection, harmonise, log_normalise, prepare_expression, select_genes


def slide(name, n=120, genes=None, seed=0, shift=0.0, zero_spots=0):
    rng = np.random.default_rng(seed)
    genes = genes or [f"G{i:03d}" for i in range(80)]
    rate = np.exp(rng.normal(0, 1, len(genes)) + shift * rng.normal(0, 1, len(genes)))
    counts = rng.poisson(rate * rng.gamma(2, 1, (n, 1)) * 3).astype(np.float32)
    counts[:zero_spots] = 0
    a = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame({"slide": name}, index=[f"{name}_{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    return a


@pytest.fixture
def raw():
    return {"r1": slide("r1", seed=1), "r2": slide("r2", seed=2, shift=0.5), "q": slide("q", seed=3, shift=1.0)}


def test_log_normalise_drops_zero_spots_and_matches_scanpy():
    a = slide("s", zero_spots=3)
    out = log_normalise(a)
    assert out.n_obs == a.n_obs - 3 and out.uns["stbench_n_zero_count_spots"] == 3
    ref = a[3:].copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    assert np.allclose(out.X.toarray(), ref.X.toarray(), atol=1e-6)


def test_heg_is_union_of_top_mean_genes():
    a = slide("a", n=10, genes=["A", "B", "C", "D"], seed=0)
    a.X = sp.csr_matrix(np.array([[9, 1, 0, 3], [9, 1, 0, 3]], dtype=np.float32).repeat(5, 0))
    b = slide("b", n=10, genes=["A", "B", "C", "D"], seed=0)
    b.X = sp.csr_matrix(np.array([[0, 1, 9, 3], [0, 1, 9, 3]], dtype=np.float32).repeat(5, 0))
    genes = select_genes({"a": a, "b": b}, ["A", "B", "C", "D"], GeneSelection("heg", 1))
    assert genes == ["A", "C"]
    assert select_genes({"a": a}, ["A", "B", "C", "D"], GeneSelection("heg", 2)) == ["A", "D"]


def test_hvg_is_union_of_scanpy_hvgs(raw):
    lognorm = {s: log_normalise(a) for s, a in raw.items()}
    genes = select_genes(lognorm, list(raw["r1"].var_names), GeneSelection("hvg", 10))
    expected = set()
    for a in lognorm.values():
        b = a.copy()
        sc.pp.highly_variable_genes(b, n_top_genes=10, flavor="seurat")
        expected |= set(b.var_names[b.var["highly_variable"]])
    assert genes == sorted(expected) and len(genes) >= 10


def test_strict_never_looks_at_the_query(raw):
    sel = GeneSelection("hvg", 10)
    a = prepare_expression(raw, ["r1", "r2"], ["q"], "strict", sel, harmony=True)
    other = dict(raw, q=slide("q", seed=99, shift=2.0))
    b = prepare_expression(other, ["r1", "r2"], ["q"], "strict", sel, harmony=True)
    assert a.genes == b.genes
    assert np.allclose(a.matrices["r1"], b.matrices["r1"]) and np.allclose(a.matrices["r2"], b.matrices["r2"])
    # the query's truth is its own log-normalised expression, never corrected
    own = log_normalise(raw["q"])[:, list(a.genes)].X.toarray()
    assert np.allclose(a.matrices["q"], own, atol=1e-6)
    assert a.info["harmony_scope"] == "reference slides"


def test_paper_protocol_corrects_the_query_with_everything(raw):
    sel = GeneSelection("hvg", 10)
    p = prepare_expression(raw, ["r1", "r2"], ["q"], "paper", sel, harmony=True)
    own = log_normalise(raw["q"])[:, list(p.genes)].X.toarray()
    assert not np.allclose(p.matrices["q"], own, atol=1e-3)
    assert p.info["harmony_scope"] == "all slides, query included"
    no_h = prepare_expression(raw, ["r1", "r2"], ["q"], "paper", sel, harmony=False)
    assert np.allclose(no_h.matrices["q"], log_normalise(raw["q"])[:, list(no_h.genes)].X.toarray(), atol=1e-6)


def test_query_missing_genes_are_zero_and_counted():
    genes = [f"G{i:03d}" for i in range(80)]
    raw = {"r1": slide("r1", genes=genes, seed=1), "r2": slide("r2", genes=genes, seed=2),
           "q": slide("q", genes=genes[:70], seed=3)}
    out = prepare_expression(raw, ["r1", "r2"], ["q"], "strict", GeneSelection("all", None), harmony=False)
    assert len(out.genes) == 80 and out.info["query_genes_missing"] == {"q": 10}
    missing = [i for i, g in enumerate(out.genes) if g not in genes[:70]]
    assert np.all(out.matrices["q"][:, missing] == 0)


def test_no_shared_genes_is_an_error():
    raw = {"r1": slide("r1", genes=["A", "B"]), "r2": slide("r2", genes=["C", "D"]), "q": slide("q", genes=["A", "B"])}
    with pytest.raises(DataError, match="share no gene symbol"):
        prepare_expression(raw, ["r1", "r2"], ["q"], "strict", GeneSelection("all", None), harmony=False)


def test_harmony_returns_spots_by_genes_and_reduces_batch_offset():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (300, 20))
    mats = {"a": (base[:150] + 0.0).astype(np.float32), "b": (base[150:] + 3.0).astype(np.float32)}
    out = harmonise(mats)
    assert out["a"].shape == (150, 20) and out["b"].shape == (150, 20)
    gap_before = np.abs(mats["a"].mean(0) - mats["b"].mean(0)).mean()
    gap_after = np.abs(out["a"].mean(0) - out["b"].mean(0)).mean()
    assert gap_after < 0.9 * gap_before
