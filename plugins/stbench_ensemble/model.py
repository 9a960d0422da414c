"""``ensemble``: train several registered models on the same reference slides and average what they predict.

Each member's prediction of a query slide is z-scored per gene over the slide's spots, the z-scores are
averaged, and the average is put back on the members' mean scale (mean of the members' per-gene means plus
the mean of their per-gene standard deviations times the averaged z-score). Equal weights per member
whatever the scale of its predictions: retrieval and ridge predictions are shrunk towards the mean, a
regression head's are not, and a plain average would let the widest member decide every correlation.
An ensemble of one model predicts exactly what the model predicts. No truth is read: the statistics are
those of the predictions. Chosen by nested validation on the reference slides (benchmarks/RESULTS.md,
"Quality target"): ST-Net (quick) with kNN on frozen features was above either alone for every outer
fold and seed tried.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stbench import Model, ModelCard, SlidePatches
from stbench.errors import OptionError

DEFAULT_MEMBERS = "stnet:profile=quick;knn:k=200,smooth=5"


def parse_members(spec: str) -> list[tuple[str, tuple[str, ...]]]:
    """``"stnet:profile=quick;knn:k=200,smooth=5"`` -> ``[("stnet", ("profile=quick",)), ("knn", ("k=200", "smooth=5"))]``."""
    members = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        name, _, opts = part.partition(":")
        members.append((name.strip(), tuple(o.strip() for o in opts.split(",") if o.strip())))
    if not members:
        raise OptionError("model 'ensemble': option 'members' is empty; e.g. -o members='stnet:profile=quick;knn:k=200'")
    return members


def combine(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """Average of per-gene z-scored predictions, on the members' mean location and scale."""
    preds = [np.asarray(p, dtype=np.float64) for p in predictions]
    means = [p.mean(axis=0) for p in preds]
    sds = [p.std(axis=0) for p in preds]
    z = np.mean([(p - m) / np.where(s > 0, s, 1.0) for p, m, s in zip(preds, means, sds)], axis=0)
    return (np.mean(means, axis=0) + np.mean(sds, axis=0) * z).astype(np.float32)


def _registry() -> Any:
    from stbench.plugins import env_plugins_dirs, get_plugin_manager

    return get_plugin_manager(plugins_dirs=env_plugins_dirs()).models


class EnsembleModel(Model):
    name = "ensemble"
    card = ModelCard(
        summary="Several registered models trained on the same reference slides; their predictions are "
                "z-scored per gene over the query slide, averaged with equal weights and put back on the "
                "members' mean scale.",
        deviations=(
            ("transductive over predictions: a spot's prediction depends on the other spots' predictions of "
             "the same query slide (their per-gene mean and spread); no truth is read"),
            ("members come from installed plugins (entry points, STBENCH_PLUGINS_DIR); a --plugins-dir given "
             "on the command line is not seen by the members"),
        ),
    )

    @dataclass(frozen=True)
    class Options:
        members: str = DEFAULT_MEMBERS

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        from stbench.options import build_options

        registry, self.specs, self.members = _registry(), parse_members(self.options.members), []
        workdir = kwargs.pop("workdir", None)
        for i, (name, opts) in enumerate(self.specs):
            if name == self.name:
                raise OptionError("model 'ensemble': an ensemble cannot hold an ensemble; list its members instead")
            cls = registry.get(name)
            member_options, _ = build_options(cls, opts)
            own = Path(workdir) / f"member{i}-{name}" if workdir is not None else None
            self.members.append(cls(member_options, workdir=own, **kwargs))

    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        for member in self.members:
            member.fit(train, genes)

    def predict(self, slide: SlidePatches) -> np.ndarray:
        return combine([member.predict(slide) for member in self.members])

    def fold_extra(self) -> dict[str, Any]:
        return {"members": [{"model": m.name, **m.fold_extra()} for m in self.members]}

    def _member_path(self, path: Path, i: int) -> Path:
        return path.with_name(f"{path.stem}.member{i}.safetensors")

    def save(self, path: str | Path) -> None:
        """``path`` names the members (safetensors metadata); member i writes beside it as ``<stem>.member<i>``."""
        from safetensors.numpy import save_file

        from stbench.errors import StbenchError

        path = Path(path)
        unsaveable = [m.name for m in self.members if not type(m).supports_checkpoints()]
        if unsaveable:
            raise StbenchError(f"ensemble member '{unsaveable[0]}' cannot save itself; it cannot be bundled")
        for i, member in enumerate(self.members):
            member.save(self._member_path(path, i))
        save_file({"n_members": np.array([len(self.members)], dtype=np.int64)}, str(path),
                  metadata={"members": json.dumps(self.specs)})

    def load(self, path: str | Path) -> None:
        from safetensors import safe_open

        from stbench.errors import StbenchError

        path = Path(path)
        with safe_open(str(path), "np") as f:
            stored = json.loads((f.metadata() or {}).get("members", "null"))
        if stored != json.loads(json.dumps(self.specs)):
            raise StbenchError(f"{path} holds members {stored}, this ensemble is {self.specs}; load it with its "
                               "own -o members=...")
        for i, member in enumerate(self.members):
            member.load(self._member_path(path, i))
