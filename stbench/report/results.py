"""The results file: one JSON per run. Schema ``stbench.results/1`` is documented in
docs/results-schema.md; bump the version on any incompatible change."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..atomic import write_text
from ..errors import ResultsError

SCHEMA = "stbench.results/1"
log = logging.getLogger("stbench")


def pack_floats(values: np.ndarray) -> dict[str, Any]:
    """Per-gene values as base64 of zlib-compressed little-endian float32 (NaN kept)."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return {"dtype": "float32", "n": int(len(values)), "zlib_b64": base64.b64encode(zlib.compress(data, 9)).decode()}


def unpack_floats(packed: dict[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(packed["zlib_b64"]))
    arr = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if len(arr) != packed["n"]:
        raise ValueError("packed array length mismatch")
    return arr


def pack_strings(values: Iterable[str]) -> dict[str, Any]:
    values = list(values)
    return {"n": len(values), "zlib_b64": base64.b64encode(zlib.compress("\n".join(values).encode(), 9)).decode()}


def unpack_strings(packed: dict[str, Any]) -> list[str]:
    text = zlib.decompress(base64.b64decode(packed["zlib_b64"])).decode()
    values = text.split("\n") if packed["n"] else []
    if len(values) != packed["n"]:
        raise ValueError("packed strings length mismatch")
    return values


def clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(clean(config), sort_keys=True).encode()).hexdigest()[:12]


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, world_size: int = 1, precision: str | None = None) -> dict[str, Any]:
    """Where a run ran: versions, machine, device; ``world_size`` data-parallel processes; ``precision``
    the resolved training / inference precision (``bf16-mixed`` or ``32``) of a model that has the option."""
    from .. import __version__

    env: dict[str, Any] = {
        "stbench": __version__, "git_sha": _git_sha(), "python": platform.python_version(),
        "platform": platform.platform(), "numpy": np.__version__, "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "device": device, "world_size": world_size,
    }
    if precision is not None:
        env["precision"] = precision
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


@dataclass
class RunResult:
    model: str
    dataset: str
    protocol: str
    seed: int
    profile: str
    options: dict[str, Any]
    changed_options: dict[str, Any]
    plugin: dict[str, Any]
    baseline: bool
    split: str
    dataset_info: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    folds: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    environment: dict[str, Any]
    wall_seconds: float
    config: dict[str, Any]
    config_hash: str
    created: str
    schema: str = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = [] if self.profile == "paper" else [f"profile={self.profile}"]
        changes = self.extra.get("profile_changes", self.changed_options)
        parts += [f"{k}={v}" for k, v in sorted(changes.items())]
        return self.model + (f" ({', '.join(parts)})" if parts else "")

    def to_json(self) -> str:
        return json.dumps(clean(asdict(self)), indent=1, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        return write_text(path, self.to_json())

    def per_gene(self, fold_index: int, metric: str) -> np.ndarray:
        return unpack_floats(self.folds[fold_index]["per_gene"][metric])

    def genes(self, fold_index: int) -> list[str]:
        return unpack_strings(self.folds[fold_index]["genes"])


_FIELDS = {f for f in RunResult.__dataclass_fields__}


def load_result(path: str | os.PathLike) -> RunResult:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"results file {path} is unreadable ({type(e).__name__}); delete it and rerun the run") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise ResultsError(f"results file {path} has schema {found!r}, expected {SCHEMA!r}; rerun the run")
    missing = sorted(_FIELDS - set(data) - {"extra"})
    if missing:
        raise ResultsError(f"results file {path} lacks {', '.join(missing)}; delete it and rerun the run")
    result = RunResult(**{k: v for k, v in data.items() if k in _FIELDS and not (k == "extra" and v is None)})
    _rescore(result, path)
    return result


def _rescore(result: RunResult, path: Path) -> None:
    """Recompute what the file derives from its per-fold, per-gene values: each fold's per-gene metric
    summaries and the run summary (a cache of the folds, not the record). A summary that disagrees with
    its folds (an edited file) is replaced, with a warning naming the file."""
    from ..eval.scoring import summarise
    from ..eval.metrics import gene_summary

    if not isinstance(result.folds, list) or not result.folds:
        raise ResultsError(f"results file {path} has no folds; it records no scores: delete it and rerun the run")
    for i, fold in enumerate(result.folds):
        if not isinstance(fold, dict) or not isinstance(fold.get("scores"), dict) or not isinstance(fold.get("per_gene", {}), dict):
            raise ResultsError(f"results file {path}: fold {i} is malformed; delete it and rerun the run")
        for metric, packed in fold.get("per_gene", {}).items():
            try:
                values = unpack_floats(packed)
            except (KeyError, TypeError, ValueError, zlib.error, binascii.Error):
                raise ResultsError(f"results file {path}: fold {i} has malformed per-gene '{metric}' values; "
                                   f"delete it and rerun the run") from None
            fold["scores"][metric] = clean(gene_summary(values))
    try:
        summary = clean(summarise(result.folds))
    except (KeyError, TypeError, ValueError, IndexError):
        raise ResultsError(f"results file {path}: its fold scores are malformed; delete it and rerun the run") from None
    edited = sorted(m for m in set(summary) | set(result.summary)
                    if not _close(summary.get(m), result.summary.get(m) if isinstance(result.summary, dict) else None))
    if edited:
        log.warning("results file %s: summary of %s does not match its folds (edited?); using the folds",
                    path, ", ".join(edited[:5]))
    result.summary = summary


def _close(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    for key in ("mean", "median"):
        x, y = a.get(key), b.get(key)
        if (x is None) != (y is None):
            return False
        if x is not None and not math.isclose(float(x), float(y), rel_tol=1e-5, abs_tol=1e-6):
            return False
    return True


def find_results(directory: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*.json") if not p.name.startswith("."))


def result_path(out_dir: str | os.PathLike, model: str, dataset: str, protocol: str, chash: str) -> Path:
    return Path(out_dir) / model / f"{dataset}.{protocol}.{chash}.json"
