"""``stbench cache ls|verify|clear`` over every folder of the cache (``STBENCH_CACHE``).

Kinds of cached file, each in its own folder under the cache root:

- ``patches/<dataset>/<slide>/<spec>.h5``: the HDF5 patch cache (built under ``<file>.lock``);
- ``prepared/<dataset>/<key>.h5``: preprocessed expression matrices per fold and protocol;
- ``features/<encoder>/<...>.h5``: frozen-encoder features (built under ``<file>.lock``);
- ``weights/<file>``: downloaded encoder weights (sha256 recorded beside them at download);
- ``images/<hash>.png``: images that lived only in memory (``uns['spatial']`` of an AnnData), named by
  the hash of their pixels.

A file's *key* is its path under its kind's folder without the extension (``her2st/C3/256px-native``);
``clear --pattern`` matches the key, its folder, or ``<kind>/<key>``. Temporaries left by killed
writers (see :mod:`stbench.atomic`) are listed and removed with their target.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..atomic import is_stale_temp, temp_target
from .locations import cache_root

log = logging.getLogger("stbench")


@dataclass(frozen=True)
class Kind:
    name: str
    suffix: str
    locked: bool
    verify: Callable[[Path], "str | None"]


def _verify_patches(path: Path) -> str | None:
    from .patches import check_chunks, source_changed, validate_patches

    return validate_patches(path) or check_chunks(path) or source_changed(path)


def verify_h5(path: Path) -> str | None:
    """Read every dataset of an HDF5 file (checksummed or compressed chunks fail on damage)."""
    import h5py

    from .patches.store import _first_line

    def read(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(read)
            if "info" in f.attrs:
                json.loads(f.attrs["info"])
    except Exception as e:
        return f"unreadable: {_first_line(e)}"
    return None


def verify_png(path: Path) -> str | None:
    """Decode the whole image (PNG's CRCs and zlib streams fail on damage)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        return f"unreadable: {type(e).__name__}"
    return None


def verify_weights(path: Path) -> str | None:
    from .fetch import sha256_of

    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        return None
    want = record.read_text().split()[0] if record.read_text().strip() else ""
    got = sha256_of(path)
    return None if got == want else f"sha256 {got[:12]}... != recorded {want[:12]}..."


KINDS: dict[str, Kind] = {
    "patches": Kind("patches", ".h5", True, _verify_patches),
    "prepared": Kind("prepared", ".h5", False, verify_h5),
    "features": Kind("features", ".h5", True, verify_h5),
    "weights": Kind("weights", "", False, verify_weights),
    "images": Kind("images", ".png", False, verify_png),
}
_SIDECARS = (".lock", ".sha256")


def _kinds(kinds: Sequence[str] | None) -> list[Kind]:
    from ..errors import StbenchError, did_you_mean

    names = list(KINDS) if not kinds else list(kinds)
    for n in names:
        if n not in KINDS:
            raise StbenchError(f"unknown cache kind '{n}'{did_you_mean(n, KINDS)}; use {', '.join(KINDS)}")
    return [KINDS[n] for n in names]


def _is_data(kind: Kind, p: Path) -> bool:
    if p.name.startswith(".") or not p.is_file() or p.name.endswith(_SIDECARS):
        return False
    return p.suffix == kind.suffix if kind.suffix else True


def _files(base: Path, kind: Kind) -> Iterator[Path]:
    if base.is_dir():
        yield from sorted(p for p in base.rglob("*") if _is_data(kind, p))


def _key(base: Path, path: Path, kind: Kind) -> str:
    rel = path.relative_to(base).as_posix()
    return rel[: -len(kind.suffix)] if kind.suffix and rel.endswith(kind.suffix) else rel


def _temps(base: Path) -> Iterator[Path]:
    if base.is_dir():
        yield from sorted(p for p in base.rglob(".*.tmp") if p.is_file() and temp_target(p))


def entries(root: str | os.PathLike | None = None, kinds: Sequence[str] | None = None,
            verify: bool = False) -> list[dict[str, Any]]:
    """One row per cached file (``kind``, ``key``, ``path``, ``size_bytes``, ``valid``, ``reason``) and per
    temporary (``kind`` = ``<kind>-temp``, ``valid`` False when its writer is gone). ``verify`` reads every
    chunk (slow on large caches); otherwise ``valid`` reflects the structure only."""
    root = Path(root) if root is not None else cache_root()
    rows = []
    for kind in _kinds(kinds):
        base = root / kind.name
        for path in _files(base, kind):
            reason = kind.verify(path) if verify else _quick(kind, path)
            rows.append({"kind": kind.name, "key": _key(base, path, kind), "path": path,
                         "size_bytes": path.stat().st_size, "valid": reason is None, "reason": reason})
        for tmp in _temps(base):
            stale = is_stale_temp(tmp)
            rows.append({"kind": f"{kind.name}-temp", "key": tmp.relative_to(base).as_posix(), "path": tmp,
                         "size_bytes": tmp.stat().st_size if tmp.exists() else 0, "valid": not stale,
                         "reason": "left by a writer that is gone" if stale else "being written"})
    return rows


def _quick(kind: Kind, path: Path) -> str | None:
    if kind.name == "patches":
        from .patches import source_changed, validate_patches

        return validate_patches(path) or source_changed(path)
    return None


def verify(root: str | os.PathLike | None = None, kinds: Sequence[str] | None = None) -> list[tuple[str, Path, str | None]]:
    """``(kind, path, reason or None)`` for every cached file, every chunk read."""
    return [(r["kind"], r["path"], r["reason"]) for r in entries(root, kinds, verify=True)
            if not r["kind"].endswith("-temp")]


def _matches(kind: Kind, key: str, pattern: str) -> bool:
    folder = key.rsplit("/", 1)[0] if "/" in key else ""
    return any(fnmatch.fnmatchcase(k, pattern) for k in (key, folder, f"{kind.name}/{key}") if k)


def clear(root: str | os.PathLike | None = None, pattern: str = "*", kinds: Sequence[str] | None = None) -> int:
    """Delete the cached files whose key matches ``pattern``, with their lock, stamp and sidecar files and
    the temporaries of dead writers. A file whose lock is held (a build in progress) is skipped. Returns
    the number of data files and temporaries removed."""
    from filelock import FileLock, Timeout

    root = Path(root) if root is not None else cache_root()
    removed = 0
    for kind in _kinds(kinds):
        base = root / kind.name
        targets: dict[Path, list[Path]] = {p: [p] for p in _files(base, kind)}
        for tmp in _temps(base):
            targets.setdefault(tmp.parent / str(temp_target(tmp)), []).append(tmp)
        for target, files in sorted(targets.items()):
            if not _matches(kind, _key(base, target, kind), pattern):
                continue
            lock_path = Path(str(target) + ".lock")
            lock = FileLock(str(lock_path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                log.warning("skipping %s: a build holds its lock", target)
                continue
            try:
                for p in files:
                    if p != target and not kind.locked and not is_stale_temp(p):
                        continue  # a live writer's temporary (prepared matrices are written without a lock)
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        removed += 1
                for side in (target.with_name(f".{target.name}.verified"), Path(str(target) + ".sha256")):
                    side.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
            finally:
                lock.release()
        _remove_empty_folders(base)
    return removed


def _remove_empty_folders(base: Path) -> None:
    if not base.is_dir():
        return
    for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


def list_patches(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per cached patch file: ``path``, ``slide_key``, ``spec_key``, ``n_kept``, ``n_blank``,
    ``size_bytes`` (also as ``size``), ``complete``, ``valid`` and ``reason`` (structure, or the source
    image changed since the build)."""
    import h5py

    from .patches.store import _norm

    rows = []
    for row in entries(root, ["patches"]):
        if row["kind"] != "patches":
            continue
        path = row["path"]
        attrs: dict[str, Any] = {}
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: _norm(f.attrs.get(k)) for k in ("n_kept", "n_blank", "complete")}
        except Exception:
            pass
        slide_key, _, spec_key = row["key"].rpartition("/")
        rows.append({"path": path, "slide_key": slide_key, "spec_key": spec_key, "n_kept": attrs.get("n_kept"),
                     "n_blank": attrs.get("n_blank"), "size_bytes": row["size_bytes"], "size": row["size_bytes"],
                     "complete": attrs.get("complete") is True, "valid": row["valid"], "reason": row["reason"]})
    return rows
