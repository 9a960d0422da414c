"""Datasets whose slides are AnnData objects in memory (the scanpy layout: counts in ``X``, full-resolution
spot centres in ``obsm['spatial']``, the image in ``uns['spatial']`` or as a path in ``uns['stbench']``),
for the Python API. They go through the same reader contract, patch cache and preprocessing as catalogue
datasets, so the strict protocol holds for them too (gene selection and Harmony fitted on reference
slides only)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from .catalog import DatasetEntry
from .catalog_dataset import CatalogDataset


def slide_names(slides: Sequence[Any]) -> list[str]:
    """A name per AnnData: its single ``uns['spatial']`` library, else its single ``obs['slide']`` value,
    else ``slide1``, ``slide2``, ... (names must come out distinct)."""
    names = []
    for i, a in enumerate(slides):
        libraries = list((a.uns.get("spatial") or {}).keys())
        labels = list(a.obs["slide"].astype(str).unique()) if "slide" in a.obs else []
        names.append(str(libraries[0]) if len(libraries) == 1 else labels[0] if len(labels) == 1 else f"slide{i + 1}")
    if len(set(names)) != len(names):
        names = [f"slide{i + 1}" for i in range(len(slides))]
    return names


def _digest(adata: Any) -> str:
    """sha256 of what a slide's results depend on: counts, names, coordinates and image."""
    import scipy.sparse as sp

    h = hashlib.sha256()
    X = adata.X
    if sp.issparse(X):
        X = X.tocsr()
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    elif X is not None:
        h.update(np.ascontiguousarray(np.asarray(X)).tobytes())
    h.update("\n".join(map(str, adata.obs_names)).encode() + b"\0" + "\n".join(map(str, adata.var_names)).encode())
    if "spatial" in adata.obsm:
        h.update(np.ascontiguousarray(np.asarray(adata.obsm["spatial"], dtype=np.float64)).tobytes())
    for lib, entry in sorted((adata.uns.get("spatial") or {}).items()):
        for key, image in sorted((entry.get("images") or {}).items()):
            h.update(f"{lib}/{key}".encode() + np.ascontiguousarray(np.asarray(image)).tobytes())
        h.update(repr(sorted((entry.get("scalefactors") or {}).items())).encode())
    h.update(repr(sorted((adata.uns.get("stbench") or {}).items())).encode())
    return h.hexdigest()


class InMemoryDataset(CatalogDataset):
    """A dataset of AnnData slides (``{slide id: AnnData}``), read with the ``anndata`` reader's rules."""

    def __init__(self, slides: Mapping[str, Any], *, query: Sequence[str] = (), gene_set: str = "hvg",
                 n_per_slide: int | None = 1000, harmony: bool = False, patch_px: int = 256,
                 pixel_size_um: float | None = None, folder: str | Path = ".", name: str | None = None) -> None:
        from .catalog import parse_entry
        from .readers.anndata_reader import AnnDataReader

        if len(slides) < 1:
            raise DataError("no slides given: pass AnnData objects (one per slide)")
        self.objects = dict(slides)
        self.digests = {s: _digest(a) for s, a in self.objects.items()}
        combined = hashlib.sha256("".join(f"{s}:{d}" for s, d in self.digests.items()).encode()).hexdigest()[:12]
        raw = {"reader": "anndata", "slides": list(self.objects), "query": list(query) or list(self.objects)[-1:],
               "split": "all", "genes": {"set": gene_set, **({"n_per_slide": n_per_slide} if gene_set != "all" else {})},
               "harmony": harmony, "patch_px": patch_px, "root": f"memory-{combined}",
               **({"pixel_size_um": pixel_size_um} if pixel_size_um is not None else {})}
        entry: DatasetEntry = parse_entry(name or f"memory-{combined}", raw, "<python>")
        super().__init__(entry, AnnDataReader())
        self.data_folder = Path(folder)
        self._read: dict[str, Any] = {}

    @property
    def folder(self) -> Path:
        return self.data_folder

    def check_present(self) -> None:
        return None

    def read(self, slide: str) -> Any:
        if slide not in self._read:
            adata = self.reader.from_anndata(self.objects[slide], self.folder, slide)
            if self.entry.pixel_size_um is not None:
                adata.uns["stbench"]["pixel_size_um"] = self.entry.pixel_size_um
            self._read[slide] = adata
        return self._read[slide]

    def slide_identity(self, slide: str) -> Any:
        return self.digests[slide]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "catalogue": None, "catalogue_packaged": False, "in_memory": True}
