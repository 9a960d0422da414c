"""The Reader interface: what a reader plugin registers.

A reader turns one slide's files into an AnnData with this contract (``check_slide_adata`` in
:mod:`.checks` enforces it; :func:`.build.build_slide` assembles it):

- ``X``: raw counts, spots x genes (scipy CSR or dense), non-negative;
- ``obs_names``: unique spot barcodes; ``var_names``: unique gene symbols;
- ``obs``: ``array_row``, ``array_col`` (int: Visium array row/col; legacy ST y/x), ``slide``,
  ``patient`` (str);
- ``obsm['spatial']``: float (N, 2) full-resolution pixel centres as (x, y) = (column, row);
- ``uns['stbench']``: ``image_path`` (str), ``image_scale`` (float: multiply full-resolution
  pixel coordinates by it to get pixels of ``image_path``; 1.0 for the full-resolution image),
  ``pixel_size_um`` (float or None, full resolution), ``reader`` and ``reader_version`` (str),
  ``source_files`` (list of the paths read).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..catalog import DatasetEntry
    from ...dataset import Dataset


class Reader(ABC):
    """Named by ``name``; the ``reader`` key of a datasets.toml entry selects it."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def make_dataset(self, entry: "DatasetEntry") -> "Dataset":
        """Build the dataset that a catalogue entry declares (cheap: no data is read here)."""


class SlideReader(Reader):
    """A reader of files on disk, one slide at a time; datasets built on it share the
    preprocessing and the HDF5 patch cache."""

    version: ClassVar[str] = "1"

    @abstractmethod
    def read_slide(self, folder: Path, slide: str, *, patient: str | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        """Read ``slide`` from ``folder`` (the dataset's data folder) into an AnnData (see module doc).

        The built-in readers share their first and last steps: :func:`.params.read_params` checks
        ``params``, :meth:`where` names the slide in every message, :func:`.build.build_slide` assembles
        and checks the AnnData; ``read_slide`` itself does only what its file format needs.
        """

    def where(self, slide: str, path: Any = None) -> str:
        """How messages about ``slide`` start: ``"<reader name> slide '<slide>'"``, then `` (<path>)``."""
        return f"{self.name} slide '{slide}'" + ("" if path is None else f" ({path})")

    def make_dataset(self, entry: "DatasetEntry") -> "Dataset":
        from ..catalog_dataset import CatalogDataset

        return CatalogDataset(entry, self)
