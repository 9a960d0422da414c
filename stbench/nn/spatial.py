"""Spatial smoothing of predictions: each spot's prediction averaged with those of its nearest spots on
the slide. It uses only what prediction is given (the spots' coordinates and the model's own outputs,
never a measured value), as a model that reads its neighbours' images would; neighbouring spots share
tissue, so averaging their predictions removes noise the image-to-expression map adds spot by spot."""
from __future__ import annotations

import numpy as np


def smooth_predictions(pred: np.ndarray, coords: np.ndarray, neighbours: int) -> np.ndarray:
    """The mean of each spot's prediction and its ``neighbours - 1`` nearest spots' (by full-resolution
    coordinates); ``neighbours <= 1`` returns ``pred`` unchanged."""
    from scipy.spatial import cKDTree

    pred = np.asarray(pred)
    n = len(pred)
    if neighbours <= 1 or n < 2:
        return pred
    _, index = cKDTree(np.asarray(coords, dtype=np.float64)).query(coords, k=min(int(neighbours), n))
    return pred[index].mean(axis=1).astype(pred.dtype, copy=False)
