"""Verified downloads of a catalogue entry's source files into the data root.

Each source is streamed to a temporary file beside its target, checked against the catalogue's size
and sha256 when known, then renamed into place: an interrupted or failed download leaves nothing a
later run trusts. A mirror (``--mirror`` / ``STBENCH_MIRROR``: a folder or a URL) replaces the
entry's ``base_url``.
"""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from .atomic import atomic_path
from .catalog import DatasetEntry
from .errors import DataError, StbenchError
from .locations import data_root, mirror as default_mirror

CHUNK = 1 << 20


def dataset_folder(entry: DatasetEntry, root: Path | None = None) -> Path:
    return (root or data_root()) / (entry.root or entry.name)


def source_location(entry: DatasetEntry, source: Mapping[str, Any], mirror: str | None = None) -> str:
    """The URL or local path a source is fetched from."""
    if mirror and entry.base_url:
        return mirror.rstrip("/") + "/" + source["path"]
    return source.get("url") or entry.base_url + source["path"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def missing_sources(entry: DatasetEntry, root: Path | None = None) -> list[str]:
    """Source paths absent from the dataset folder or of the wrong size."""
    folder = dataset_folder(entry, root)
    out = []
    for src in entry.sources:
        p = folder / src["path"]
        if not p.is_file() or ("size" in src and p.stat().st_size != src["size"]):
            out.append(src["path"])
    return out


def _open(location: str, timeout: float) -> tuple[Any, int | None]:
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
        try:
            return open(path, "rb"), path.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read {path} ({e.strerror}); check the mirror folder") from None
    if not location.startswith(("https://", "http://")):
        raise DataError(f"unsupported URL scheme in {location}; use https://, a folder or file://")
    try:
        response = urllib.request.urlopen(location, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {location} failed: HTTP {e.code}; try again later or use --mirror") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot reach {location} ({reason}); check the network or use --mirror FOLDER|URL") from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def fetch_source(entry: DatasetEntry, source: Mapping[str, Any], root: Path | None = None, mirror: str | None = None,
                 progress: Callable[..., None] | None = None, timeout: float = 60.0) -> Path:
    target = dataset_folder(entry, root) / source["path"]
    if target.is_file() and ("size" not in source or target.stat().st_size == source["size"]):
        if "sha256" not in source or sha256_of(target) == source["sha256"]:
            return target
    location = source_location(entry, source, mirror)
    stream, total = _open(location, timeout)
    digest, done = hashlib.sha256(), 0
    try:
        with stream, atomic_path(target) as tmp, open(tmp, "wb") as out:
            for block in iter(lambda: stream.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(source["path"], done, total)
            out.flush()
            if "size" in source and done != source["size"]:
                raise DataError(f"{source['path']} from {location} has {done} bytes, expected {source['size']}; "
                                f"the download was cut or the file changed upstream")
            if "sha256" in source and digest.hexdigest() != source["sha256"]:
                raise DataError(f"checksum mismatch for {source['path']} from {location}: got {digest.hexdigest()[:16]}..., "
                                f"expected {source['sha256'][:16]}...; nothing was kept")
    except OSError as e:
        raise StbenchError(f"cannot write {target} ({e.strerror}); free disk space or set STBENCH_DATA") from None
    return target


def fetch_dataset(entry: DatasetEntry, root: Path | None = None, mirror: str | None = None,
                  progress: Callable[..., None] | None = None) -> list[Path]:
    if not entry.sources:
        raise DataError(f"dataset '{entry.name}' lists no sources to fetch; put its files in {dataset_folder(entry, root)}")
    mirror = mirror if mirror is not None else default_mirror()
    paths = []
    for i, src in enumerate(entry.sources):
        if progress:
            progress("files", i, len(entry.sources))
        paths.append(fetch_source(entry, src, root, mirror, progress))
    if progress:
        progress("files", len(entry.sources), len(entry.sources))
    return paths


__all__ = ["dataset_folder", "source_location", "missing_sources", "fetch_source", "fetch_dataset", "sha256_of"]
