"""The Metric interface: what a metric plugin registers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A named comparison of true and predicted expression (n_spots x n_genes, same gene order).

    ``per_gene`` metrics return one value per gene (NaN where undefined); the others return one
    float for the whole slide (for example the fraction of spots with a hit).
    """

    name: str
    higher_is_better: bool
    per_gene: bool
    fn: Callable[[np.ndarray, np.ndarray], "np.ndarray | float"]
    description: str = ""

    def compute(self, true: np.ndarray, pred: np.ndarray) -> "np.ndarray | float":
        return self.fn(true, pred)
