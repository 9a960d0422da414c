"""Dataset, Fold and PreparedFold: what the runner asks of any dataset."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import DataError, did_you_mean

PROTOCOLS = ("strict", "paper")
ProgressFn = Callable[..., None]


@dataclass(frozen=True)
class Fold:
    """One split: models train on ``reference`` slides and are scored on ``query`` slides."""

    name: str
    reference: tuple[str, ...]
    query: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class PreparedFold:
    """A fold ready to run. ``truth`` stays with the runner; ``queries`` carry no expression."""

    fold: Fold
    genes: tuple[str, ...]
    train: Sequence[Any]
    queries: Sequence[Any]
    truth: Mapping[str, np.ndarray]
    info: Mapping[str, Any] = field(default_factory=dict)


class Dataset(ABC):
    """A named collection of slides with a default split.

    Subclasses set ``name``, ``slides`` and ``query_slides`` and implement :meth:`prepare`.
    ``patients`` (slide -> patient) enables leave-one-patient-out folds.
    """

    name: str
    description: str = ""
    slides: tuple[str, ...] = ()
    query_slides: tuple[str, ...] = ()
    patients: Mapping[str, str] = {}
    default_split: str = "single"
    #: Bump when a change alters the prepared expression or patches: ``stbench bench`` reruns older results.
    version: str = "1"

    def folds(self, which: str = "default") -> list[Fold]:
        """``default`` (the dataset's own split), ``single`` (the paper's query slides), ``all``
        (leave-one-slide-out), ``patients`` (leave-one-patient-out) or a comma list of slides."""
        which = self.default_split if which == "default" else which
        if which == "single":
            ref = tuple(s for s in self.slides if s not in self.query_slides)
            return [Fold("query=" + "+".join(self.query_slides), ref, tuple(self.query_slides))]
        if which in ("all", "loo", "leave-one-out"):
            return [self._leave_out((s,)) for s in self.slides]
        if which == "patients":
            if not self.patients:
                raise DataError(f"dataset '{self.name}' records no patients; use --folds all")
            groups: dict[str, list[str]] = {}
            for s in self.slides:
                groups.setdefault(self.patients[s], []).append(s)
            if len(groups) < 2:
                raise DataError(f"dataset '{self.name}' has one patient; use --folds all")
            return [self._leave_out(tuple(g), f"patient={p}") for p, g in groups.items()]
        chosen = [s.strip() for s in which.split(",") if s.strip()]
        repeated = sorted({s for s in chosen if chosen.count(s) > 1})
        if repeated:
            raise DataError(f"--folds names slide '{repeated[0]}' more than once; list each query slide once")
        for s in chosen:
            if s not in self.slides:
                raise DataError(
                    f"dataset '{self.name}' has no slide '{s}'{did_you_mean(s, self.slides)} "
                    f"(--folds takes default, single, all, patients or slide ids)"
                )
        return [self._leave_out((s,)) for s in chosen]

    def _leave_out(self, query: tuple[str, ...], name: str | None = None) -> Fold:
        ref = tuple(s for s in self.slides if s not in query)
        if not ref:
            raise DataError(f"dataset '{self.name}' needs at least two slides to hold one out")
        return Fold(name or "query=" + "+".join(query), ref, query)

    @abstractmethod
    def prepare(self, fold: Fold, protocol: str = "strict", progress: ProgressFn | None = None) -> PreparedFold:
        """Load and preprocess the fold's slides in the protocol's expression space."""

    def image_of(self, slide_id: str) -> tuple[str, float] | None:
        """Optional: the slide's tissue image file and the factor mapping full-resolution spot
        coordinates onto it; figures and exports draw on it. ``None``: draw on the patches."""
        return None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "slides": list(self.slides), "query": list(self.query_slides),
                "split": self.default_split, "version": self.version}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol '{protocol}'{did_you_mean(protocol, PROTOCOLS)} (use strict or paper)")
    return protocol
