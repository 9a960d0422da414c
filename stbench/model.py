"""The Model interface: what a model plugin implements.

A model is a class with a ``name``, a ``card`` and a nested frozen ``Options`` dataclass whose
defaults are the published settings. ``profiles`` maps a profile name (for example ``quick``) to
option overrides; the ``paper`` profile is the defaults. The runner builds one instance per fold,
calls :meth:`fit` with the reference slides, then :meth:`predict` once per query slide. Query
slides carry no expression: the targets are never handed to a model.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from .options import check_options, check_seed
from .slide import SlidePatches


@dataclass(frozen=True)
class ModelCard:
    """What a model is, for people and for the leaderboard.

    ``baseline``: a calibration row (it does not use the image). ``calibration``: what a baseline
    calibrates, read by the board's findings: ``"chance"`` (random reference spots: what retrieval gives
    without the image) or ``"constant"`` (one profile at every spot). ``claims``: the models this model's
    paper reports beating; every board where both ran tests the claim. ``kind``: ``"trained"``,
    ``"baseline"`` or ``"frozen"`` (a pretrained encoder with no training on expression).
    """

    summary: str
    paper: str = ""
    code: str = ""
    license: str = ""
    baseline: bool = False
    deviations: tuple[str, ...] = ()
    calibration: str = ""
    claims: tuple[str, ...] = ()
    kind: str = ""

    def recorded(self) -> dict[str, Any]:
        """What results files record of the card (the board reads it back)."""
        return {"baseline": self.baseline, "calibration": self.calibration, "claims": list(self.claims),
                "kind": self.kind or ("baseline" if self.baseline else "trained")}


class Model(ABC):
    name: ClassVar[str]
    card: ClassVar[ModelCard]
    #: Bump when a change alters what the model predicts: ``stbench bench`` reruns results of another version.
    version: ClassVar[str] = "1"
    profiles: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None, *, device: str = "cpu", seed: int = 0,
                 protocol: str = "strict", workdir: str | Path | None = None,
                 progress: Callable[..., None] | None = None, dataset_info: Mapping[str, Any] | None = None) -> None:
        self.options = options if options is not None else type(self).Options()
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"{type(self).__name__}: options must be an Options dataclass instance")
        check_options(self.options, self.name)
        check_seed(seed)
        self.device, self.seed, self.protocol = device, seed, protocol
        self.workdir = Path(workdir) if workdir is not None else None
        self._progress = progress
        self.dataset_info = dict(dataset_info or {})

    def report(self, task: str, completed: float, total: float | None = None, **info: Any) -> None:
        """Tell the caller how far a long step is (the CLI shows a progress bar)."""
        if self._progress is not None:
            self._progress(task, completed, total, **info)

    @abstractmethod
    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        """Learn from reference slides (each with ``expression`` over ``genes``)."""

    @abstractmethod
    def predict(self, slide: SlidePatches) -> np.ndarray:
        """(n_spots, n_genes) predictions for a query slide, rows in the slide's spot order."""

    def fold_extra(self) -> dict[str, Any]:
        """JSON-safe records the runner adds to each fold of the results file after :meth:`predict`.
        Default: the training history when the model kept one in ``self.history`` (the shared trainer's
        ``History``: epochs with train/validation loss and the best epoch), which the loss-curve figure
        draws. Override to record more; keep it small (it goes into every results file)."""
        history = getattr(self, "history", None)
        return {"history": history.to_dict()} if history is not None and hasattr(history, "to_dict") else {}

    def embed(self, slide: SlidePatches) -> np.ndarray:
        """Optional: (n_spots, d) image embeddings of a slide, for UMAP figures of reference vs query."""
        raise NotImplementedError(f"model '{self.name}' does not embed images")

    @classmethod
    def supports_embeddings(cls) -> bool:
        return cls.embed is not Model.embed

    def save(self, path: str | Path) -> None:
        raise NotImplementedError(f"model '{self.name}' does not save checkpoints")

    def load(self, path: str | Path) -> None:
        raise NotImplementedError(f"model '{self.name}' does not load checkpoints")

    @classmethod
    def supports_checkpoints(cls) -> bool:
        return cls.save is not Model.save and cls.load is not Model.load
