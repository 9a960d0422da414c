"""``ridge`` and ``knn``: expression from a frozen encoder's features, the field's standard yardstick for
how much a trained model adds over a pretrained encoder.

``ridge`` follows HEST-Benchmark (Jaume et al. 2024; mahmoodlab/HEST ``src/hest/bench/benchmark.py``
``predict_single_split`` and ``src/hest/bench/trainer.py`` ``train_test_reg``): features are standardised
and reduced by PCA to 256 dimensions (``StandardScaler`` + ``PCA(n_components=256)``, fitted on the
reference spots only), then a ridge regression (``sklearn.linear_model.Ridge``, solver ``lsqr``,
``max_iter=1000``, no intercept) maps them to all genes at once, with HEST's rule for the penalty
``alpha = 100 / (n_components * n_genes)``. Because the PCA scores are centred, a ridge without intercept
has the same coefficients as one fitted on centred targets; stbench adds the reference mean back as the
intercept, which changes no Pearson r but keeps RMSE/SSIM in the expression's own range.

``knn`` is retrieval without training: each query spot averages the expression of its ``k`` reference
spots with the most similar features (cosine), as the contrastive models retrieve with learned
embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from stbench import Model, ModelCard, SlidePatches
from stbench.options import option

#: The HEST-Benchmark penalty rule.
def hest_alpha(n_components: int, n_genes: int) -> float:
    return 100.0 / (n_components * n_genes)


@dataclass(frozen=True)
class FrozenOptions:
    encoder: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Optional[str] = None
    input_px: Optional[int] = option(None, ge=1)
    input_crop: Optional[int] = option(None, ge=1)
    batch_size: int = option(64, ge=1)
    smooth: int = option(0, ge=0)


class FrozenFeatureModel(Model):
    """Shared by ``ridge`` and ``knn``: features of every slide from the feature cache."""

    Options = FrozenOptions

    def encoder(self) -> Any:
        from stbench.nn.features import FrozenEncoder

        if getattr(self, "_encoder", None) is None:
            o = self.options
            self._encoder = FrozenEncoder(o.encoder, o.pretrained, o.weights, o.input_px, o.input_crop,
                                          device=self.device, batch_size=o.batch_size)
        return self._encoder

    def features(self, slide: SlidePatches) -> np.ndarray:
        from stbench.nn.features import features_of

        return features_of(slide.images, self.encoder(), progress=self._progress, task=f"features {slide.slide_id}")

    def smoothed(self, pred: np.ndarray, slide: SlidePatches) -> np.ndarray:
        """``-o smooth=N``: each spot's prediction averaged with its N-1 nearest spots' (0: off)."""
        from stbench.nn.spatial import smooth_predictions

        return smooth_predictions(pred, slide.coords, self.options.smooth)

    def reference(self, train: Sequence[SlidePatches]) -> tuple[np.ndarray, np.ndarray]:
        feats = np.concatenate([self.features(s) for s in train])
        values = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
        return feats, values


#: spots per block of ridge's prediction
PREDICT_BLOCK = 8192


class RidgeModel(FrozenFeatureModel):
    name = "ridge"
    card = ModelCard(
        summary="Frozen encoder + PCA(256) + ridge regression to every gene (HEST-Benchmark's linear probe); no "
                "training of the encoder.",
        paper="Jaume et al., HEST-1k: A Dataset for Spatial Transcriptomics and Histology Image Analysis, NeurIPS 2024",
        code="https://github.com/mahmoodlab/HEST (src/hest/bench/benchmark.py, src/hest/bench/trainer.py)",
        license="reimplemented with scikit-learn from the description and code, no code copied",
        baseline=True, calibration="frozen", kind="frozen",
        deviations=(
            "offline default encoder: ImageNet EfficientNet-Lite0 (HEST ranks pathology foundation models; pass "
            "-o encoder=hf-hub:... for those)",
            "the reference mean is added as the intercept (Pearson unchanged; RMSE/SSIM in the data's range)",
            "targets: the run's expression space and gene set (HEST: log1p of its 50-gene lists)",
        ),
    )

    @dataclass(frozen=True)
    class Options(FrozenOptions):
        n_components: int = option(256, ge=1)
        alpha: Optional[float] = option(None, gt=0)
        standardize: bool = True

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        o = self.options
        feats, values = self.reference(train)
        n_components = min(o.n_components, feats.shape[0], feats.shape[1])
        steps = ([("scaler", StandardScaler())] if o.standardize else []) + [
            ("pca", PCA(n_components=n_components, random_state=self.seed))]
        self.reduce = Pipeline(steps).fit(feats)
        scores = self.reduce.transform(feats)
        self.mean = values.mean(0)
        alpha = o.alpha if o.alpha is not None else hest_alpha(n_components, values.shape[1])
        self.ridge = Ridge(alpha=alpha, solver="lsqr", fit_intercept=False, max_iter=1000,
                           random_state=self.seed).fit(scores, values - self.mean)
        self.alpha, self.genes = float(alpha), list(genes)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        """In blocks of spots: scaler, PCA and ridge each copy their input in float64 (about 5 GB for a
        100k-spot slide's features and predictions at once)."""
        feats = self.features(slide)
        out = np.empty((len(feats), len(self.mean)), np.float32)
        for start in range(0, len(feats), PREDICT_BLOCK):
            scores = self.reduce.transform(feats[start:start + PREDICT_BLOCK])
            out[start:start + PREDICT_BLOCK] = self.ridge.predict(scores) + self.mean
        return self.smoothed(out, slide)

    def fold_extra(self) -> dict[str, Any]:
        return {"ridge": {"alpha": self.alpha, "n_components": int(self.ridge.coef_.shape[1])}}

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        pca = self.reduce.named_steps["pca"]
        tensors = {"pca_components": pca.components_, "pca_mean": pca.mean_, "coef": self.ridge.coef_,
                   "mean": self.mean, "alpha": np.array([self.alpha])}
        if "scaler" in self.reduce.named_steps:
            scaler = self.reduce.named_steps["scaler"]
            tensors.update({"scaler_mean": scaler.mean_, "scaler_scale": scaler.scale_})
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(path))

    def load(self, path: str | Path) -> None:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        self.reduce = _LinearReduce(t.get("scaler_mean"), t.get("scaler_scale"), t["pca_mean"], t["pca_components"])
        self.ridge = _Linear(t["coef"])
        self.mean, self.alpha = t["mean"], float(t["alpha"][0])


class _LinearReduce:
    """The fitted scaler + PCA as plain arrays (what a bundle stores)."""

    def __init__(self, scaler_mean: Any, scaler_scale: Any, pca_mean: np.ndarray, components: np.ndarray) -> None:
        self.scaler_mean, self.scaler_scale, self.pca_mean, self.components = scaler_mean, scaler_scale, pca_mean, components

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.scaler_mean is not None:
            x = (x - self.scaler_mean) / self.scaler_scale
        return (x - self.pca_mean) @ self.components.T


class _Linear:
    def __init__(self, coef: np.ndarray) -> None:
        self.coef_ = coef

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) @ self.coef_.T


class KNNModel(FrozenFeatureModel):
    name = "knn"
    card = ModelCard(
        summary="Frozen encoder features; each query spot averages the expression of its k most similar "
                "reference spots (cosine): retrieval with no training.",
        paper="the retrieval step of image-expression contrastive models (Xie et al. 2023), on frozen features",
        license="stbench's own baseline",
        baseline=True, calibration="frozen-retrieval", kind="frozen",
        deviations=("offline default encoder: ImageNet EfficientNet-Lite0",),
    )

    @dataclass(frozen=True)
    class Options(FrozenOptions):
        k: int = option(50, ge=1)
        aggregation: Literal["mean", "weighted", "top1"] = "mean"

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        self.ref_feats, self.ref_values = self.reference(train)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        from stbench.nn.retrieval import predict_by_retrieval

        pred = predict_by_retrieval(self.features(slide), self.ref_feats, self.ref_values, k=self.options.k,
                                    method=self.options.aggregation, device=self.device)
        return self.smoothed(np.asarray(pred, dtype=np.float32), slide)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({"ref_feats": np.ascontiguousarray(self.ref_feats), "ref_values": np.ascontiguousarray(self.ref_values)},
                  str(path))

    def load(self, path: str | Path) -> None:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        self.ref_feats, self.ref_values = t["ref_feats"], t["ref_values"]
