"""HisToGene's slide-size limit: a slide above ``max_spots`` is a one-line error without ``-o window``; with
it, slides are split into spatially contiguous windows (each one sequence) for training and prediction, and
every spot is predicted; slides within the window stay one sequence, exactly as without the option."""
from collections import deque

import h5py
import numpy as np
import pytest
from stbench_histogene.model import HisToGene, spatial_windows

from stbench.errors import DataError
from stbench.options import build_options
from stbench.slide import SlidePatches
from stbench.testing import fit_tiny

SMALL = ["dim=32", "depth=2", "heads=2", "dim_head=16", "mlp_dim=64", "patch_crop=8", "epochs=2", "lr=1e-3"]


def grid_slide(width, height, images=None, expression=True, genes=5, seed=0):
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(width), np.arange(height))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    n = len(grid)
    if images is None:
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return SlidePatches("big", np.array([f"s{i}" for i in range(n)]), grid * 20.0 + 5, grid, images,
                        tuple(f"g{i}" for i in range(genes)),
                        rng.normal(size=(n, genes)).astype(np.float32) if expression else None)


def model(*options):
    opts, _ = build_options(HisToGene, [*SMALL, *options])
    return HisToGene(opts)


def connected(cells):
    """Whether grid cells form one 4-connected region."""
    cells = {tuple(c) for c in cells}
    seen, todo = set(), deque([next(iter(cells))])
    while todo:
        x, y = todo.popleft()
        if (x, y) in seen:
            continue
        seen.add((x, y))
        todo.extend(n for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)) if n in cells)
    return seen == cells


@pytest.mark.parametrize("size", [1, 7, 64, 100, 1000])
def test_windows_cover_every_spot_once_and_are_contiguous(size):
    slide = grid_slide(40, 30, expression=False)
    g = slide.grid
    keep = np.flatnonzero(((g[:, 0] - 19.5) / 20) ** 2 + ((g[:, 1] - 14.5) / 15) ** 2 < 1)  # an oval section
    coords, grid = slide.coords[keep], g[keep]
    assert connected(grid)
    parts = spatial_windows(coords, size)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(keep)))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    assert all(len(p) <= size for p in parts) and len(parts) <= max(1, 3 * len(keep) // size)
    for p in parts:  # the spots inside a window's bounding box are its own: windows are rectangles of the slide
        lo, hi = coords[p].min(0), coords[p].max(0)
        inside = np.flatnonzero(((coords >= lo) & (coords <= hi)).all(1))
        assert inside.tolist() == p.tolist()
        assert connected(grid[p])
    assert [p.tolist() for p in spatial_windows(coords, size)] == [p.tolist() for p in parts]  # deterministic


def test_a_slide_above_max_spots_is_a_one_line_error_naming_the_option():
    slide = grid_slide(15, 10)
    with pytest.raises(DataError) as e:
        model("max_spots=100", "n_pos=16").fit([slide], slide.genes)
    message = str(e.value)
    assert "\n" not in message and "slide 'big' has 150 spots" in message and "max_spots=100" in message
    assert "pass -o window=100" in message
    # a query slide above the limit, for a model trained on small slides
    small = grid_slide(5, 5)
    m = model("max_spots=100", "n_pos=16")
    m.fit([small], small.genes)
    with pytest.raises(DataError, match="pass -o window=100"):
        m.predict(slide.without_expression())


def test_windows_train_and_predict_every_spot(tmp_path):
    slide = grid_slide(15, 10)
    with h5py.File(tmp_path / "patches.h5", "w") as f:  # lazily read, as from the patch cache
        f["images"] = np.asarray(slide.images)
    with h5py.File(tmp_path / "patches.h5", "r") as f:
        lazy = grid_slide(15, 10, images=f["images"])
        m = model("max_spots=100", "window=40", "n_pos=16")
        m.fit([lazy], lazy.genes)
        windows = m.sequences(lazy)
        assert len(windows) == 4 and sorted(len(i) for i, _ in windows) == [35, 35, 40, 40]  # 7|8 columns, then 5|5 rows
        assert len(m.history.epochs) == 2
        pred = m.predict(lazy.without_expression())
        assert pred.shape == (150, 5) and np.isfinite(pred).all()
        # each window is predicted as its own sequence, in place
        for idx, part in windows:
            np.testing.assert_allclose(pred[idx], m.predict(part.without_expression()), rtol=1e-5, atol=1e-6)
    assert np.abs(pred[windows[0][0]].mean(0) - pred[windows[1][0]].mean(0)).max() > 0


def test_slides_within_the_window_are_one_sequence_exactly_as_without_the_option():
    plain, fold = fit_tiny(HisToGene, SMALL)
    windowed, _ = fit_tiny(HisToGene, [*SMALL, "window=1000"], fold)
    query = fold.queries[0]
    assert windowed.sequences(query) == [(None, query)]
    np.testing.assert_array_equal(windowed.predict(query), plain.predict(query))
