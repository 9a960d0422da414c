"""An installable third-party plugin: `pip install examples/stbench-example-plugin`, then
`stbench list models` shows `colour-ridge`."""
from dataclasses import dataclass

import numpy as np

from stbench import Model, ModelCard, hookimpl


def colour_features(slide):
    """Per-spot mean and standard deviation of each RGB channel, read in blocks."""
    blocks = [np.asarray(slide.images[i:i + 256], dtype=np.float32) for i in range(0, len(slide), 256)]
    imgs = np.concatenate(blocks) if blocks else np.zeros((0, 1, 1, 3), np.float32)
    return np.concatenate([imgs.mean((1, 2)), imgs.std((1, 2))], axis=1) / 255.0


class ColourRidge(Model):
    name = "colour-ridge"
    card = ModelCard(summary="Ridge regression from patch colour statistics (an example third-party plugin)")

    @dataclass(frozen=True)
    class Options:
        alpha: float = 1.0

    def fit(self, train, genes):
        x = np.concatenate([colour_features(s) for s in train])
        y = np.concatenate([s.expression for s in train])
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        xc = x - self.x_mean
        self.coef = np.linalg.solve(xc.T @ xc + self.options.alpha * np.eye(x.shape[1]), xc.T @ (y - self.y_mean))

    def predict(self, slide):
        return (colour_features(slide) - self.x_mean) @ self.coef + self.y_mean


@hookimpl
def register_models(register):
    register(ColourRidge)
