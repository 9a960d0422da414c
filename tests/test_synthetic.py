import numpy as np
import pytest

from stbench.errors import DataError
from stbench.data.synthetic import SyntheticDataset
from stbench.testing import tiny_dataset


def test_deterministic_and_shaped():
    a, b = tiny_dataset(seed=3), tiny_dataset(seed=3)
    sa, za = a.slide("tiny1")
    sb, zb = b.slide("tiny1")
    assert np.array_equal(sa.images, sb.images) and np.array_equal(sa.expression, sb.expression)
    assert sa.images.shape == (48, 16, 16, 3) and sa.images.dtype == np.uint8
    assert sa.expression.shape == (48, 12) and za.shape == (48, 3)
    assert not np.array_equal(tiny_dataset(seed=4).slide("tiny1")[0].expression, sa.expression)


def test_query_slides_carry_no_expression_and_truth_matches():
    ds = tiny_dataset()
    fold = ds.folds("single")[0]
    prepared = ds.prepare(fold)
    assert [s.slide_id for s in prepared.train] == ["tiny1", "tiny2"]
    (query,) = prepared.queries
    assert query.expression is None
    assert np.array_equal(prepared.truth["tiny3"], ds.slide("tiny3")[0].expression)
    with pytest.raises(ValueError):
        prepared.train[0].expression[0, 0] = 1.0


def test_colour_drives_signal_genes_only():
    ds = SyntheticDataset("s", ("a",), ("a",), grid_width=20, grid_height=20, n_genes=40, n_signal=20, patch_px=16)
    slide, z = ds.slide("a")
    colour = slide.images.reshape(len(slide), -1, 3).mean(1)
    x = np.column_stack([colour, np.ones(len(colour))])

    def r2(y):
        fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - ((y - fit) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)

    signal, noise = r2(slide.expression[:, :20]), r2(slide.expression[:, 20:])
    assert np.median(signal) > 0.4 and np.median(noise) < 0.6 * np.median(signal)
    assert np.all(ds.weights[20:] == 0) and np.all(np.abs(ds.weights[:20]).sum(1) > 0)
    known = z @ ds.weights[:20].T + ds.mu[:20]
    r = [np.corrcoef(known[:, g], slide.expression[:, g])[0, 1] for g in range(20)]
    assert np.median(r) > 0.7
    assert abs(np.corrcoef(colour[:, 1], z[:, 0])[0, 1]) > 0.7


def test_folds():
    ds = tiny_dataset(n_slides=4)
    assert [f.query for f in ds.folds("all")] == [("tiny1",), ("tiny2",), ("tiny3",), ("tiny4",)]
    assert ds.folds("tiny2")[0].reference == ("tiny1", "tiny3", "tiny4")
    with pytest.raises(DataError, match="has no slide 'tiny9'"):
        ds.folds("tiny9")
    with pytest.raises(DataError, match="unknown protocol 'strikt'; did you mean 'strict'"):
        ds.prepare(ds.folds("single")[0], "strikt")
