"""Tiny AnnData slides with a tissue-like image on disk, and a user catalogue naming them: a dataset read
through the real reader, patch cache and preprocessing, written in a test's tmp_path in well under a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_slides(folder: Path, slides=("s1", "s2", "s3"), n_side: int = 5, n_genes: int = 30, blank: bool = False,
                 seed: int = 0) -> Path:
    """``folder/<slide>.h5ad`` + ``folder/<slide>.png`` for each slide: a ``n_side`` x ``n_side`` grid of spots
    64 px apart on a 384 px image of smooth noise (or all black with ``blank``), Poisson counts."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    xy = np.column_stack([64.0 + 64 * cols.ravel(), 64.0 + 64 * rows.ravel()])
    for s in slides:
        if blank:
            image = np.zeros((384, 384, 3), np.uint8)
        else:
            coarse = rng.integers(40, 230, (24, 24, 3)).astype(np.uint8)
            image = np.asarray(Image.fromarray(coarse).resize((384, 384), Image.BILINEAR))
        Image.fromarray(image).save(folder / f"{s}.png")
        counts = rng.poisson(3.0, (len(xy), n_genes)).astype(np.float32)
        adata = anndata.AnnData(
            X=sp.csr_matrix(counts),
            obs=pd.DataFrame({"array_row": rows.ravel(), "array_col": cols.ravel()},
                             index=[f"{s}-spot{i}" for i in range(len(xy))]),
            var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
        adata.obsm["spatial"] = xy.copy()
        adata.uns["stbench"] = {"image_path": f"{s}.png", "image_scale": 1.0, "pixel_size_um": 1.0}
        adata.write_h5ad(folder / f"{s}.h5ad")
    return folder


def write_catalog(path: Path, root: str, name: str = "tiny_ad", slides=("s1", "s2", "s3"), patch_px: int = 32) -> Path:
    """A user catalogue with one anndata dataset whose ``root`` is ``root`` (relative or absolute)."""
    slide_list = ", ".join(f'"{s}"' for s in slides)
    path.write_text(f'''[{name}]
reader = "anndata"
slides = [{slide_list}]
query = ["{slides[-1]}"]
split = "all"
genes = {{ set = "hvg", n_per_slide = 20 }}
patch_px = {patch_px}
root = "{root}"
''')
    return path
