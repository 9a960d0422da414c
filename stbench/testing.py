"""Helpers for plugin authors: tiny data and conformance tests: ``check_model`` (the Model contract),
``check_learns`` (the model learns an image-driven signal and beats random reference spots),
``check_reader`` (a reader on real files) and ``check_dataset`` (folds and prepared folds).

    from stbench.testing import check_learns, check_model
    def test_my_model():
        check_model(MyModel, options=["profile=quick"])
    def test_my_model_learns():
        check_learns(MyModel, options=["epochs=5"])
"""
from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dataset import PreparedFold
from .model import Model, ModelCard
from .options import build_options
from .data.synthetic import SyntheticDataset

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def tiny_dataset(n_slides: int = 3, grid: tuple[int, int] = (8, 6), n_genes: int = 12, patch_px: int = 16,
                 seed: int = 0) -> SyntheticDataset:
    slides = tuple(f"tiny{i + 1}" for i in range(n_slides))
    return SyntheticDataset("tiny", slides, slides[-1:], "single", grid_width=grid[0], grid_height=grid[1],
                            n_genes=n_genes, n_signal=max(1, n_genes // 2), patch_px=patch_px, seed=seed)


def tiny_fold(**kw: Any) -> PreparedFold:
    ds = tiny_dataset(**kw)
    return ds.prepare(ds.folds("single")[0])


def fit_tiny(model_cls: type, options: Sequence[str] = (), fold: PreparedFold | None = None,
             seed: int = 0) -> tuple[Model, PreparedFold]:
    """A model fitted on the tiny fold's reference slides, with its options built from ``key=value``."""
    fold = fold or tiny_fold()
    opts, _ = build_options(model_cls, list(options))
    model = model_cls(opts, seed=seed)
    model.fit(fold.train, fold.genes)
    return model, fold


def _fit_predict(model_cls: type, options: Any, fold: PreparedFold, seed: int, workdir: Path, query: Any = None) -> tuple[Model, np.ndarray]:
    model = model_cls(options, device="cpu", seed=seed, protocol="strict", workdir=workdir)
    model.fit(list(fold.train), list(fold.genes))
    return model, np.asarray(model.predict(query if query is not None else fold.queries[0]))


def learning_fold(patch_px: int = 32, seed: int = 0) -> PreparedFold:
    """Four synthetic slides (80 spots, 16 genes, half of them driven by patch colour and texture);
    the last slide is the query."""
    ds = SyntheticDataset("learn", ("a", "b", "c", "d"), ("d",), "single", grid_width=10, grid_height=8,
                          n_genes=16, n_signal=8, patch_px=patch_px, seed=seed)
    return ds.prepare(ds.folds("single")[0])


def random_k_predictions(train: Sequence[Any], n_query: int, k: int = 20, seed: int = 0) -> np.ndarray:
    """Each query spot: the mean expression of ``k`` reference spots drawn at random (the image unused)."""
    reference = np.concatenate([np.asarray(s.expression, dtype=np.float32) for s in train])
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.choice(len(reference), min(k, len(reference)), replace=False) for _ in range(n_query)])
    return reference[picks].mean(1)


def check_learns(model_cls: type, options: Sequence[str] = (), *, margin: float = 0.15, patch_px: int = 32,
                 seed: int = 0) -> tuple[float, float]:
    """Fit on :func:`learning_fold` and assert that the mean per-gene Pearson on the query slide beats
    random reference spots (k = 20) by ``margin``; returns (the model's, the random spots')."""
    from .eval.metrics import pearson

    fold = learning_fold(patch_px)
    opts, _ = build_options(model_cls, list(options))
    with tempfile.TemporaryDirectory() as tmp:
        _, pred = _fit_predict(model_cls, opts, fold, seed, Path(tmp))
    truth = fold.truth[fold.queries[0].slide_id]
    r_model = float(np.nanmean(pearson(truth, pred)))
    r_random = float(np.nanmean(pearson(truth, random_k_predictions(fold.train, len(truth), seed=seed))))
    assert r_model > r_random + margin, (
        f"model '{model_cls.name}' does not learn the synthetic signal: mean Pearson {r_model:.3f}, random "
        f"reference spots {r_random:.3f} (needs a margin of {margin})")
    return r_model, r_random


def check_model(model_cls: type, options: Sequence[str] = (), *, seed: int = 0, determinism: bool = True,
                rtol: float = 1e-4, atol: float = 1e-5, learns: bool = False) -> None:
    """Raise AssertionError naming the first broken rule of the Model contract; with ``learns``, also
    :func:`check_learns` with the same options."""
    assert isinstance(model_cls, type) and issubclass(model_cls, Model), f"{model_cls!r} is not a stbench.Model subclass"
    name = getattr(model_cls, "name", None)
    assert isinstance(name, str) and NAME_RE.match(name), f"model name {name!r} must be lowercase [a-z0-9._-]"
    assert isinstance(getattr(model_cls, "card", None), ModelCard), f"model '{name}' needs a ModelCard in `card`"
    assert dataclasses.is_dataclass(model_cls.Options), f"model '{name}': Options must be a dataclass"
    assert model_cls.Options.__dataclass_params__.frozen, f"model '{name}': Options must be frozen"
    try:
        model_cls.Options()
    except TypeError as e:
        raise AssertionError(f"model '{name}': every Options field needs a default (the paper setting): {e}") from None
    for profile in getattr(model_cls, "profiles", {}):
        build_options(model_cls, {"profile": profile})
    opts, _ = build_options(model_cls, list(options))

    fold = tiny_fold()
    query = fold.queries[0]
    assert query.expression is None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model, pred = _fit_predict(model_cls, opts, fold, seed, tmp_path / "a")
        shape = (len(query), len(fold.genes))
        assert pred.shape == shape, f"model '{name}' predicted shape {pred.shape}, expected {shape}"
        assert np.issubdtype(pred.dtype, np.floating), f"model '{name}' predicted dtype {pred.dtype}, expected float"
        assert np.all(np.isfinite(pred)), f"model '{name}' predicted non-finite values"

        order = np.random.default_rng(0).permutation(len(query))
        permuted_pred = np.asarray(model.predict(query.subset(order)))
        assert np.allclose(permuted_pred, pred[order], rtol=rtol, atol=atol), (
            f"model '{name}': predictions must follow the query slide's row order "
            f"(permuting the spots did not permute the predictions the same way)")

        if determinism:
            _, again = _fit_predict(model_cls, opts, fold, seed, tmp_path / "b")
            assert np.allclose(again, pred, rtol=rtol, atol=atol), f"model '{name}' is not deterministic for a fixed seed"

        if model_cls.supports_checkpoints():
            ckpt = tmp_path / "checkpoint.safetensors"
            model.save(ckpt)
            fresh = model_cls(opts, device="cpu", seed=seed, protocol="strict", workdir=tmp_path / "c")
            fresh.load(ckpt)
            reloaded = np.asarray(fresh.predict(query))
            assert np.allclose(reloaded, pred, rtol=rtol, atol=atol), f"model '{name}': save/load changed the predictions"
    if learns:
        check_learns(model_cls, options, seed=seed)


def check_reader(reader: Any, folder: str | Path, slide: str, *, params: dict[str, Any] | None = None,
                 patient: str | None = None) -> Any:
    """Conformance test of a slide reader on real files: the AnnData contract (raw counts, unique names,
    coordinates, grid, ``uns['stbench']``), spots inside an image that exists, the same result when read
    twice, and a one-line error naming the slide for a slide that is not there. Returns the AnnData."""
    from .data.readers.base import SlideReader
    from .data.readers.checks import check_slide_adata
    from .errors import StbenchError

    name = getattr(reader, "name", None)
    assert isinstance(name, str) and NAME_RE.match(name), f"reader name {name!r} must be lowercase [a-z0-9._-]"
    assert isinstance(reader, SlideReader), f"reader '{name}' is not a stbench SlideReader"
    assert isinstance(getattr(reader, "version", None), str), f"reader '{name}' needs a version string"
    adata = reader.read_slide(Path(folder), slide, patient=patient, params=dict(params or {}))
    check_slide_adata(adata, f"reader '{name}' slide '{slide}'")
    meta = adata.uns["stbench"]
    image = Path(meta["image_path"])
    assert image.is_file(), f"reader '{name}': image {image} does not exist"
    from .data.images import open_image

    with open_image(image) as src:
        h, w = src.shape
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64) * float(meta["image_scale"])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    assert inside.mean() > 0.5, f"reader '{name}': most spot centres lie outside {image} ({w} x {h} px)"
    assert (meta["reader"], meta["reader_version"]) == (name, reader.version), (
        f"reader '{name}': uns['stbench'] must name the reader and its version")
    again = reader.read_slide(Path(folder), slide, patient=patient, params=dict(params or {}))
    assert list(again.obs_names) == list(adata.obs_names) and list(again.var_names) == list(adata.var_names)
    assert (abs(again.X - adata.X)).sum() == 0, f"reader '{name}' is not deterministic"
    try:
        reader.read_slide(Path(folder), "no-such-slide-0", patient=patient, params=dict(params or {}))
    except StbenchError as e:
        assert "\n" not in str(e) and "no-such-slide-0" in str(e), f"reader '{name}': error for a missing slide: {e}"
    else:
        raise AssertionError(f"reader '{name}' read a slide that does not exist")
    return adata


def check_dataset(dataset: Any, *, protocol: str = "strict", folds: str = "default", max_folds: int = 1) -> None:
    """Conformance test of a Dataset: a name and slides, folds whose query slides are held out of the
    reference, and prepared folds in which query slides carry no expression while the truth (kept for
    the runner) matches their spots and genes. Prepares at most ``max_folds`` folds."""
    import json

    from .dataset import Dataset, PreparedFold

    assert isinstance(dataset, Dataset), f"{dataset!r} is not a stbench Dataset"
    name = getattr(dataset, "name", None)
    assert isinstance(name, str) and name, "a dataset needs a name"
    assert len(dataset.slides) >= 2 and len(set(dataset.slides)) == len(dataset.slides), (
        f"dataset '{name}' needs at least two distinct slides")
    assert set(dataset.query_slides) <= set(dataset.slides), f"dataset '{name}': query slides not in slides"
    fold_list = dataset.folds(folds)
    assert fold_list, f"dataset '{name}' gives no folds for '{folds}'"
    for fold in fold_list:
        assert fold.query and not set(fold.query) & set(fold.reference), f"fold {fold.name}: query in reference"
        assert set(fold.query) | set(fold.reference) <= set(dataset.slides), f"fold {fold.name}: unknown slides"
    for fold in fold_list[:max_folds]:
        prepared = dataset.prepare(fold, protocol)
        assert isinstance(prepared, PreparedFold), f"dataset '{name}': prepare must return a PreparedFold"
        genes = tuple(prepared.genes)
        assert genes and len(set(genes)) == len(genes), f"dataset '{name}': genes must be distinct and non-empty"
        assert [s.slide_id for s in prepared.train] == list(fold.reference)
        assert [s.slide_id for s in prepared.queries] == list(fold.query)
        for s in prepared.train:
            assert s.expression is not None and s.expression.shape == (len(s), len(genes)), (
                f"dataset '{name}': reference slide '{s.slide_id}' needs expression over the fold's genes")
            assert np.isfinite(s.expression).all(), f"dataset '{name}': non-finite expression in '{s.slide_id}'"
        for q in prepared.queries:
            assert q.expression is None, f"dataset '{name}' hands query slide '{q.slide_id}' with its expression"
            truth = np.asarray(prepared.truth[q.slide_id])
            assert truth.shape == (len(q), len(genes)), f"dataset '{name}': truth of '{q.slide_id}' has shape {truth.shape}"
            assert q.images.shape[0] == len(q) and q.images.shape[3] == 3
        json.dumps(dict(prepared.info), default=str)
