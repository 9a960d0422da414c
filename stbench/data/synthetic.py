"""A synthetic dataset with a known image -> expression signal, for tests and the offline demo.

Each slide is a grid of spots. Three smooth latent fields z (plus per-spot noise) set every
patch's colour (z0: eosin-like pink, z1: haematoxylin-like purple) and stripe texture (z2:
frequency). The first ``n_signal`` genes have log-rates linear in z; the others have no signal of
their own and move only through library-size normalisation, as in real data. Counts are Poisson
draws, log-normalised like real data (normalize_total to the median, log1p).
Everything is a pure function of the seed and the slide index.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from ..dataset import Dataset, Fold, PreparedFold, ProgressFn, check_protocol
from ..errors import CatalogError
from .readers.base import Reader
from ..slide import SlidePatches

DEFAULTS: dict[str, Any] = {
    "grid_width": 16, "grid_height": 14, "n_genes": 60, "n_signal": 30, "patch_px": 32,
    "seed": 0, "noise": 0.3, "depth": 2000.0,
}


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])


def latent_fields(coords01: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(N, 3) standardised latent values: sums of Gaussian blobs over the unit square + noise."""
    z = np.zeros((len(coords01), 3))
    for k in range(3):
        for _ in range(3):
            centre, width, amp = rng.uniform(0, 1, 2), rng.uniform(0.15, 0.4), rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)
            z[:, k] += amp * np.exp(-((coords01 - centre) ** 2).sum(1) / (2 * width**2))
    z = (z - z.mean(0)) / (z.std(0) + 1e-9)
    return z + noise * rng.standard_normal(z.shape)


def render_patches(z: np.ndarray, px: int, rng: np.random.Generator) -> np.ndarray:
    """(N, px, px, 3) uint8 patches whose colour and stripe frequency follow z."""
    n = len(z)
    base = np.stack([
        200 + 30 * np.tanh(z[:, 0]) - 25 * np.tanh(z[:, 1]),
        150 - 40 * np.tanh(z[:, 0]) - 35 * np.tanh(z[:, 1]),
        190 - 10 * np.tanh(z[:, 0]) + 30 * np.tanh(z[:, 1]),
    ], axis=1)
    yy, xx = np.mgrid[0:px, 0:px] / px
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    freq = (4 + 3 * np.tanh(z[:, 2]))[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    img = base[:, None, None, :] + 25 * stripes[..., None] + rng.normal(0, 6, (n, px, px, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def gene_model(n_genes: int, n_signal: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Loadings W (n_genes x 3; zero rows for noise genes) and baseline log-rates mu."""
    rng = _rng(seed, "genes")
    w = rng.normal(0, 0.6, (n_genes, 3))
    w[n_signal:] = 0
    mu = rng.uniform(-1.5, 1.0, n_genes)
    return w, mu


def log_normalise(counts: np.ndarray) -> np.ndarray:
    """The real data's normalisation (:func:`stbench.data.preprocess.log_normalise`) of dense counts."""
    import anndata

    from .preprocess import log_normalise as normalise_slide

    return np.asarray(normalise_slide(anndata.AnnData(np.asarray(counts, dtype=np.float32))).X, dtype=np.float32)


class SyntheticDataset(Dataset):
    def __init__(self, name: str, slides: tuple[str, ...], query: tuple[str, ...], split: str = "all",
                 description: str = "", **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise CatalogError(f"dataset '{name}': unknown synthetic param(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.name, self.slides, self.query_slides = name, tuple(slides), tuple(query)
        self.default_split, self.description = split, description
        self.params = {**DEFAULTS, **params}
        p = self.params
        self.genes = tuple(f"GENE{i:03d}" for i in range(p["n_genes"]))
        self.weights, self.mu = gene_model(p["n_genes"], p["n_signal"], p["seed"])

    @lru_cache(maxsize=None)
    def slide(self, slide_id: str) -> tuple[SlidePatches, np.ndarray]:
        """The slide with expression, and its latent values z."""
        p = self.params
        rng = _rng(p["seed"], "slide", slide_id)
        gx, gy = np.meshgrid(np.arange(p["grid_width"]), np.arange(p["grid_height"]))
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        pitch = p["patch_px"] * 1.25
        coords = (grid + 1) * pitch + rng.uniform(-2, 2, grid.shape)
        z = latent_fields(grid / np.maximum(grid.max(0), 1), rng, p["noise"])
        images = render_patches(z, p["patch_px"], rng)
        batch = rng.normal(0, 0.1, p["n_genes"])
        rate = np.exp(self.mu + z @ self.weights.T + batch)
        library = rng.lognormal(0, 0.2, (len(z), 1))
        counts = rng.poisson(rate / rate.sum(1, keepdims=True) * p["depth"] * library)
        slide = SlidePatches(
            slide_id=slide_id,
            barcodes=np.array([f"{slide_id}_{x}x{y}" for x, y in grid]),
            coords=coords, grid=grid, images=images, genes=self.genes,
            expression=log_normalise(counts), pixel_size_um=1.0, patient=slide_id,
        )
        return slide, z

    def prepare(self, fold: Fold, protocol: str = "strict", progress: ProgressFn | None = None) -> PreparedFold:
        check_protocol(protocol)
        train = [self.slide(s)[0] for s in fold.reference]
        queries = [self.slide(s)[0] for s in fold.query]
        return PreparedFold(
            fold=fold, genes=self.genes, train=train,
            queries=[q.without_expression() for q in queries],
            truth={q.slide_id: q.expression for q in queries},
            info={"gene_set": "all", "n_genes": len(self.genes), "normalisation": "normalize_total(median)+log1p",
                  "harmony": False, "signal_genes": int(self.params["n_signal"])},
        )

    def info(self) -> dict[str, Any]:
        return {**super().info(), "params": dict(self.params)}


class SyntheticReader(Reader):
    name = "synthetic"
    description = "generated slides with a known image -> expression signal (no files)"

    def make_dataset(self, entry: Any) -> SyntheticDataset:
        return SyntheticDataset(entry.name, entry.slides, entry.query, entry.split, entry.description, **entry.params)
