from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from stbench import Model, ModelCard, SlidePatches
from stbench.options import option


#: Query spots averaged at once by random-k.
SPOT_BLOCK = 256


def _stack_expression(train: Sequence[SlidePatches]) -> np.ndarray:
    return np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])


class MeanModel(Model):
    """Every query spot gets the mean reference expression profile."""

    name = "mean"
    card = ModelCard(
        summary="Predicts the mean reference profile for every spot. Its predictions are constant per "
                "gene, so Pearson and RMSE are undefined (n/a); SSIM and Hit@T show what they give for free.",
        baseline=True,
        calibration="constant",
    )

    @dataclass(frozen=True)
    class Options:
        pass

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        self.profile = _stack_expression(train).mean(0)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        return np.broadcast_to(self.profile, (len(slide), len(self.profile))).copy()

    def save(self, path: str | Path) -> None:
        save_file({"profile": self.profile}, str(path))

    def load(self, path: str | Path) -> None:
        self.profile = load_file(str(path))["profile"]


class RandomKModel(Model):
    """Each query spot gets the mean of K reference spots drawn at random.

    The draw for a spot depends only on the run seed and the spot's barcode, so predictions do not
    depend on the order of the query spots.
    """

    name = "random-k"
    card = ModelCard(
        summary="Mean of K random reference spots per query spot (K = the retrieval models' top-K): "
                "a retrieval model that ignores the image.",
        baseline=True,
        calibration="chance",
    )

    @dataclass(frozen=True)
    class Options:
        k: int = option(50, ge=1)

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        self.reference = _stack_expression(train)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        """Spots are averaged in blocks so memory stays at a block's (block x k x genes) values."""
        n_ref = len(self.reference)
        k = min(self.options.k, n_ref)
        out = np.empty((len(slide), self.reference.shape[1]), dtype=np.float32)
        for start in range(0, len(slide), SPOT_BLOCK):
            picks = np.stack([
                np.random.default_rng([self.seed, zlib.crc32(str(b).encode())]).choice(n_ref, k, replace=False)
                for b in slide.barcodes[start:start + SPOT_BLOCK]
            ])
            out[start:start + len(picks)] = self.reference[picks].mean(1)
        return out

    def save(self, path: str | Path) -> None:
        save_file({"reference": self.reference}, str(path))

    def load(self, path: str | Path) -> None:
        self.reference = load_file(str(path))["reference"]
