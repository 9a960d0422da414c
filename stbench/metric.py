"""The Metric interface: what a metric plugin registers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A named comparison of true and predicted expression (n_spots x n_genes, same gene order).

    ``per_gene`` metrics return one value per gene (NaN where undefined); the others return one
    float for the whole slide (for example the fraction of spots with a hit).

    - ``label``: the name tables and figures show (default: ``name``).
    - ``ranks``: the leaderboard orders its rows by this metric's mean (the first registered metric that
      ranks; its per-gene values also drive the board's confidence intervals and paired tests).
    - ``top_genes``: also summarise a per-gene metric over the top-k genes by total (``<name>_heg@k``)
      and by variance (``<name>_hvg@k``) of the true expression.
    - ``spatial``: ``fn(true, pred, coords)`` also receives the spots' (n_spots, 2) full-resolution (x, y)
      centres, for metrics of spatial structure (for example autocorrelation of the residuals).
    - ``spot_mean``: a per-slide metric that is the mean over spots of a per-spot value (Hit@T), so it can
      be computed on blocks of spots. Per-gene metrics are always computed on blocks of genes (each gene's
      value depends on its own column only); this keeps scoring of large slides in bounded memory.
    """

    name: str
    higher_is_better: bool
    per_gene: bool
    fn: Callable[..., "np.ndarray | float"]
    description: str = ""
    label: str = ""
    ranks: bool = False
    top_genes: bool = False
    spatial: bool = False
    spot_mean: bool = False

    @property
    def display(self) -> str:
        return self.label or self.name

    def compute(self, true: np.ndarray, pred: np.ndarray, coords: np.ndarray | None = None) -> "np.ndarray | float":
        if self.spatial:
            if coords is None:
                raise ValueError(f"metric '{self.name}' is spatial: pass the spots' coordinates")
            return self.fn(true, pred, np.asarray(coords, dtype=np.float64))
        return self.fn(true, pred)

    def meta(self) -> dict[str, Any]:
        """What results files record about the metric (tables read it back)."""
        return {"higher_is_better": self.higher_is_better, "per_gene": self.per_gene, "label": self.display,
                "ranks": self.ranks, "top_genes": self.top_genes, "spatial": self.spatial}
