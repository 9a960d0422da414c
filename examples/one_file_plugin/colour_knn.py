"""A whole stbench model plugin in one file: `stbench --plugins-dir examples/one_file_plugin run
--model colour-knn --dataset synthetic`. Each query spot gets the mean expression of the K reference
spots whose patches have the closest mean colour."""
from dataclasses import dataclass

import numpy as np

from stbench import Model, ModelCard, hookimpl


def mean_colour(slide):
    return np.asarray(slide.images, dtype=np.float32).mean((1, 2))


class ColourKNN(Model):
    name = "colour-knn"
    card = ModelCard(summary="k nearest reference spots by mean patch colour (an example plugin)")

    @dataclass(frozen=True)
    class Options:
        k: int = 10

    def fit(self, train, genes):
        self.colours = np.concatenate([mean_colour(s) for s in train])
        self.expression = np.concatenate([s.expression for s in train])

    def predict(self, slide):
        d = ((mean_colour(slide)[:, None, :] - self.colours[None]) ** 2).sum(-1)
        nearest = np.argsort(d, axis=1, kind="stable")[:, : self.options.k]
        return self.expression[nearest].mean(1)


@hookimpl
def register_models(register):
    register(ColourKNN)
