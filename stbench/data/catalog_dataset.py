"""A dataset declared in datasets.toml and read from files: reader -> patch cache -> preprocessing."""
from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from .catalog import PACKAGED, DatasetEntry
from ..dataset import Dataset, Fold, PreparedFold, ProgressFn, check_protocol
from ..errors import DataError
from .fetch import dataset_folder, source_problems
from .prepared import prepared_key, read_prepared, write_prepared
from .preprocess import PREPROCESS_VERSION, GeneSelection, PreparedExpression, prepare_expression
from ..slide import ImagesView, SlidePatches

log = logging.getLogger("stbench")


def _file_identity(path: str) -> list[Any]:
    p = Path(path)
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


class CatalogDataset(Dataset):
    def __init__(self, entry: DatasetEntry, reader: Any) -> None:
        self.entry, self.reader = entry, reader
        self.name, self.description = entry.name, entry.description
        self.slides, self.query_slides = entry.slides, entry.query
        self.patients = dict(entry.patients)
        self.default_split = entry.split

    @property
    def version(self) -> str:
        """What the prepared expression depends on besides the files: the preprocessing and the reader."""
        return f"preprocess-{PREPROCESS_VERSION}/{self.reader.name}-{self.reader.version}"

    @property
    def folder(self) -> Path:
        return dataset_folder(self.entry)

    def check_present(self) -> None:
        if not self.entry.sources:
            if not self.folder.is_dir():
                raise DataError(f"dataset '{self.name}' has no folder {self.folder}: put its files there "
                                f"(or set STBENCH_DATA / the catalogue's root)")
            return
        problems = source_problems(self.entry)
        if problems:
            path, problem = problems[0]
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            if problem == "missing":
                raise DataError(f"dataset '{self.name}' is not downloaded ({path}{more} missing in {self.folder}): "
                                f"run `stbench fetch {self.name}`")
            raise DataError(f"dataset '{self.name}': {self.folder / path} is damaged or cut ({problem}){more}: "
                            f"run `stbench fetch {self.name}` to download it again")

    @lru_cache(maxsize=None)
    def read(self, slide: str) -> Any:
        adata = self.reader.read_slide(self.folder, slide, patient=self.patients.get(slide), params=dict(self.entry.params))
        expected = self.entry.expected_spots.get(slide)
        if expected is not None and adata.n_obs != expected:
            log.warning("dataset %s slide %s: %d spots under tissue, the catalogue expects %d",
                        self.name, slide, adata.n_obs, expected)
        if self.entry.pixel_size_um is not None:
            adata.uns["stbench"]["pixel_size_um"] = self.entry.pixel_size_um
        return adata

    def patches(self, slide: str, progress: ProgressFn | None = None) -> Path:
        """The slide's HDF5 patch file, built on first use and shared by every model and gene set."""
        from .locations import cache_dir
        from .patches import PatchSpec, ensure_patches, patch_file

        adata = self.read(slide)
        meta = adata.uns["stbench"]
        spec = PatchSpec(patch_px=self.entry.patch_px)
        out = patch_file(cache_dir("patches").parent, f"{self.cache_key}/{slide}", spec)
        return ensure_patches(
            meta["image_path"], np.asarray(adata.obsm["spatial"], dtype=np.float64), np.asarray(adata.obs_names),
            adata.obs[["array_col", "array_row"]].to_numpy(), out, spec,
            image_scale=float(meta.get("image_scale", 1.0)), source_um_per_px=meta.get("pixel_size_um"),
            reader_version=f"{self.reader.name}/{self.reader.version}", progress=progress,
        )

    @property
    def cache_key(self) -> str:
        """The cache folder of this dataset's slides: the catalogue ``root`` (shared by entries that read the
        same files, e.g. an HVG and an HEG entry), or for an absolute root its folder name plus a hash of
        the path (``/data/x`` -> ``x-1a2b3c4d``)."""
        root = self.entry.root or self.name
        if Path(root).expanduser().is_absolute():
            resolved = str(Path(root).expanduser().resolve())
            name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(resolved).name) or "root"
            return f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
        return root

    def slide_identity(self, slide: str) -> Any:
        """What identifies a slide's data for the prepared-matrix cache: its source files' names, sizes and
        modification times."""
        return [_file_identity(f) for f in self.read(slide).uns["stbench"]["source_files"]]

    def image_of(self, slide: str) -> tuple[str, float]:
        meta = self.read(slide).uns["stbench"]
        return str(meta["image_path"]), float(meta.get("image_scale", 1.0))

    def _prepared_key(self, fold: Fold, protocol: str, patch_barcodes: dict[str, np.ndarray]) -> str:
        return prepared_key({
            "reader": [self.reader.name, self.reader.version], "params": dict(self.entry.params),
            "genes": dict(self.entry.genes), "harmony": self.entry.harmony, "protocol": protocol,
            "reference": list(fold.reference), "query": list(fold.query), "version": PREPROCESS_VERSION,
            "files": {s: self.slide_identity(s) for s in patch_barcodes},
            "spots": {s: hashlib.sha256("\n".join(b).encode()).hexdigest() for s, b in patch_barcodes.items()},
        })

    def _expression(self, fold: Fold, protocol: str, patch_barcodes: dict[str, np.ndarray]) -> PreparedExpression:
        """Prepared matrices, cached on disk by a hash of the inputs, protocol and fold."""
        from .locations import cache_dir

        path = cache_dir("prepared", self.name) / f"{self._prepared_key(fold, protocol, patch_barcodes)}.h5"
        cached = read_prepared(path, list(patch_barcodes))
        if cached is not None:
            return cached
        raw = {}
        for s, barcodes in patch_barcodes.items():
            adata = self.read(s)
            raw[s] = adata[adata.obs_names.isin(barcodes)]
        gene_sel = GeneSelection(self.entry.genes["set"], self.entry.genes.get("n_per_slide"))
        prepared = prepare_expression(raw, fold.reference, fold.query, protocol, gene_sel, self.entry.harmony)
        write_prepared(path, prepared, list(patch_barcodes))
        return prepared

    def prepare(self, fold: Fold, protocol: str = "strict", progress: ProgressFn | None = None) -> PreparedFold:
        from .patches import open_patches

        check_protocol(protocol)
        self.check_present()
        slides = [*fold.reference, *fold.query]
        opened = {}
        for i, s in enumerate(slides):
            if progress:
                progress("prepare slides", i, len(slides), slide=s)
            opened[s] = open_patches(self.patches(s, progress))
        if progress:
            progress("prepare slides", len(slides), len(slides))
        expr = self._expression(fold, protocol, {s: np.asarray(opened[s]["barcodes"]).astype(str) for s in slides})
        views = {}
        for s in slides:
            p = opened[s]
            pb = np.asarray(p["barcodes"]).astype(str)
            index = pd.Index(pb).get_indexer(expr.barcodes[s]).astype(np.int64)
            images = p["images"] if np.array_equal(index, np.arange(len(pb))) else ImagesView(p["images"], index)
            meta = self.read(s).uns["stbench"]
            views[s] = SlidePatches(
                slide_id=s, barcodes=expr.barcodes[s], coords=np.asarray(p["coords"])[index],
                grid=np.asarray(p["grid"])[index], images=images, genes=expr.genes, expression=expr.matrices[s],
                pixel_size_um=meta.get("pixel_size_um"), patient=self.patients.get(s, s),
            )
        info = {**expr.info, "patch_px": self.entry.patch_px,
                "spots": {s: len(views[s]) for s in slides},
                "blank_patches": {s: int(opened[s]["attrs"].get("n_blank") or 0) for s in slides}}
        return PreparedFold(
            fold=fold, genes=expr.genes, train=[views[s] for s in fold.reference],
            queries=[views[s].without_expression() for s in fold.query],
            truth={s: views[s].expression for s in fold.query}, info=info,
        )

    def info(self) -> dict[str, Any]:
        e = self.entry
        return {**super().info(), "reader": e.reader, "gene_set": e.gene_set, "n_per_slide": e.genes.get("n_per_slide"),
                "harmony": e.harmony, "patch_px": e.patch_px, "citation": e.citation, "catalogue": e.source_file,
                "catalogue_packaged": Path(e.source_file) == PACKAGED, "version": self.version}


def catalogue_datasets(paths: Sequence[Path], readers: Any) -> Iterator[tuple[Dataset, Path]]:
    """``(dataset, catalogue file)`` for every entry of the catalogue files, each built by the reader its
    ``reader`` key names (a one-line error naming the file and entry for an unknown reader)."""
    from ..errors import CatalogError, UnknownNameError
    from .catalog import load_catalog

    for path in paths:
        for entry in load_catalog(path):
            try:
                reader = readers.get(entry.reader)
            except UnknownNameError as e:
                raise CatalogError(f"{entry.source_file}: dataset '{entry.name}' key 'reader': {e}") from None
            yield reader.make_dataset(entry), path
