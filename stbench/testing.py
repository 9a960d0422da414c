"""Helpers for plugin authors: tiny data, ``check_model`` (the conformance test) and ``check_learns``
(the model learns an image-driven signal and beats random reference spots).

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
from .synthetic import SyntheticDataset

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
    random reference spots (k = 20) by ``margin``; returns (model's, random-k's)."""
    from .metrics import pearson

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
