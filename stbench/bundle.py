"""A trained model on disk: the model's own checkpoint (safetensors) and a JSON manifest, loaded without
unpickling anything.

Layout of a bundle folder::

    manifest.json        schema stbench.bundle/1: model, versions, options, genes, preprocessing,
                         input handling, training slides and a hash of the training data, and the
                         sha256 and size of every other file
    model.safetensors    what ``Model.save`` writes (weights, and for retrieval models the reference
    model.json           embeddings and expression), plus its JSON sidecar when the model writes one

A bundle is written into a temporary folder beside the target and renamed into place, so a reader
never sees half of one. Loading checks the manifest's schema, the model's version against the
installed plugin's, and every file's size and sha256 before the model reads them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import StbenchError

SCHEMA = "stbench.bundle/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
MAX_MANIFEST_BYTES = 64 * 2**20


class BundleError(StbenchError):
    pass


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model, ready to predict, and its manifest."""

    model: Any
    manifest: Mapping[str, Any]
    path: Path

    @property
    def genes(self) -> list[str]:
        return list(self.manifest["genes"])

    @property
    def pixel_size_um(self) -> float | None:
        return self.manifest["input"].get("pixel_size_um")

    @property
    def patch_px(self) -> int:
        return int(self.manifest["input"]["patch_px"])


def data_sha256(slides: Sequence[Any], genes: Sequence[str]) -> str:
    """sha256 of what a model was trained on: genes, and each slide's id, barcodes and expression."""
    h = hashlib.sha256("\n".join(genes).encode())
    for s in slides:
        h.update(f"\n{s.slide_id}\n".encode())
        h.update("\n".join(map(str, s.barcodes)).encode())
        h.update(np.ascontiguousarray(s.expression, dtype="<f4").tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_bundle(model: Any, out: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``model`` (``Model.save``) and ``manifest`` (completed with schema, versions, files) to
    the folder ``out``, atomically. ``out`` must not exist or be empty."""
    from . import __version__

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"bundle folder {out} already exists; choose another --out or delete it")
    if not type(model).supports_checkpoints():
        raise BundleError(f"model '{model.name}' cannot save itself (no save/load); it cannot be bundled")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
    except OSError as e:
        raise BundleError(f"cannot write to {out.parent} ({e.strerror}); choose a writable --out") from None
    try:
        model.save(tmp / WEIGHTS)
        files = {p.name: {"sha256": _sha256(p), "size": p.stat().st_size} for p in sorted(tmp.iterdir())}
        full = {"schema": SCHEMA, "model": model.name, "model_version": str(type(model).version),
                "stbench": __version__, **manifest, "files": files,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The verified manifest of a bundle folder (schema, and every listed file's size and sha256)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist; pass the folder `stbench train --out` wrote")
    if not manifest_path.is_file():
        raise BundleError(f"bundle {folder} has no {MANIFEST}; it is incomplete: train it again")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is too large to be a bundle manifest")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path} is unreadable ({type(e).__name__}); train the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise BundleError(f"bundle {folder} has schema {found!r}, this stbench reads {SCHEMA!r}; train it again "
                          f"with this version")
    missing = [k for k in ("model", "model_version", "genes", "options", "input", "files") if k not in manifest]
    if missing:
        raise BundleError(f"bundle {folder}: manifest lacks {', '.join(missing)}; train it again")
    for name, meta in manifest["files"].items():
        f = folder / name
        if Path(name).name != name or not f.is_file():
            raise BundleError(f"bundle {folder} is incomplete: {name} is missing; copy the whole folder or train again")
        if f.stat().st_size != meta.get("size") or _sha256(f) != meta.get("sha256"):
            raise BundleError(f"bundle {folder}: {name} does not match its manifest (damaged or edited); "
                              f"copy it again or train again")
    return manifest


def load_bundle(path: str | os.PathLike, plugins: Any, *, device: str = "cpu") -> Bundle:
    """The model of a bundle, checked against the installed plugin's version and loaded from its
    safetensors checkpoint (never unpickled)."""
    from .options import build_options

    folder = Path(path)
    manifest = read_manifest(folder)
    cls = plugins.models.get(manifest["model"])
    if str(cls.version) != str(manifest["model_version"]):
        raise BundleError(f"bundle {folder} holds model '{cls.name}' version {manifest['model_version']}, the installed "
                          f"plugin is version {cls.version}; train the bundle again or install the matching plugin")
    known = {f for f in cls.Options.__dataclass_fields__}
    options, _ = build_options(cls, {k: v for k, v in manifest["options"].items() if k in known})
    model = cls(options, device=device, seed=int(manifest.get("seed", 0)), protocol=manifest.get("protocol", "strict"),
                dataset_info=dict(manifest.get("preprocessing", {})))
    try:
        model.load(folder / WEIGHTS)
    except StbenchError:
        raise
    except Exception as e:
        raise BundleError(f"bundle {folder}: model '{cls.name}' could not load its weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); train it again") from None
    return Bundle(model, manifest, folder)
