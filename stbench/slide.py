"""SlidePatches: the read-only view of one slide that models see."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class SlidePatches:
    """One slide's spots: patches, positions and (for reference slides only) expression.

    ``coords`` are full-resolution pixel centres as (x, y) = (column, row). ``grid`` holds the
    integer spot-array position as (x, y) too: (array_col, array_row) for Visium, (x, y) for
    legacy ST. ``images`` is any array-like of shape (N, H, W, 3) uint8 that supports NumPy
    indexing (an in-memory array or a lazy HDF5 dataset). ``expression`` is (N, G) float32 in
    the run's expression space, or ``None`` for a query slide: a model cannot read the targets
    it is scored on, because they are never handed to it.
    """

    slide_id: str
    barcodes: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    images: Any
    genes: tuple[str, ...]
    expression: np.ndarray | None = None
    pixel_size_um: float | None = None
    patient: str | None = None

    def __post_init__(self) -> None:
        n = len(self.barcodes)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("barcodes", _readonly(np.asarray(self.barcodes).astype(str)))
        set_("coords", _readonly(np.asarray(self.coords, dtype=np.float64)))
        set_("grid", _readonly(np.asarray(self.grid, dtype=np.int64)))
        set_("genes", tuple(str(g) for g in self.genes))
        if self.coords.shape != (n, 2) or self.grid.shape != (n, 2):
            raise DataError(
                f"slide '{self.slide_id}': coords {self.coords.shape} and grid {self.grid.shape} "
                f"must both be ({n}, 2) for {n} barcodes"
            )
        shape = tuple(getattr(self.images, "shape", ()))
        if len(shape) != 4 or shape[0] != n or shape[3] != 3:
            raise DataError(f"slide '{self.slide_id}': images must be ({n}, H, W, 3), got {shape}")
        if self.expression is not None:
            expr = _readonly(np.asarray(self.expression, dtype=np.float32))
            if expr.shape != (n, len(self.genes)):
                raise DataError(
                    f"slide '{self.slide_id}': expression {expr.shape} does not match "
                    f"{n} spots x {len(self.genes)} genes"
                )
            set_("expression", expr)

    def __len__(self) -> int:
        return len(self.barcodes)

    @property
    def n_spots(self) -> int:
        return len(self.barcodes)

    @property
    def patch_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])  # type: ignore[return-value]

    def without_expression(self) -> "SlidePatches":
        return dataclasses.replace(self, expression=None)

    def subset(self, index: np.ndarray) -> "SlidePatches":
        """The same slide restricted to ``index`` (sorted positions), images read into memory."""
        index = np.asarray(index)
        return dataclasses.replace(
            self,
            barcodes=self.barcodes[index],
            coords=self.coords[index],
            grid=self.grid[index],
            images=np.asarray(self.images[np.sort(index)])[np.argsort(np.argsort(index))],
            expression=None if self.expression is None else self.expression[index],
        )


class ImagesView:
    """Rows ``index`` of an images array-like, without reading them."""

    def __init__(self, images: Any, index: np.ndarray) -> None:
        self.images, self.index = images, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *tuple(images.shape[1:]))
        self.dtype = getattr(images, "dtype", np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.index[key]
        return np.asarray(self.images[rows])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.images[self.index])
        return out.astype(dtype) if dtype is not None else out
