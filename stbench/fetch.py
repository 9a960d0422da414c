"""Verified downloads of a catalogue entry's source files into the data root.

Each source is streamed to ``<file>.part`` beside its target (resumed with an HTTP Range request
after an interruption, retried with backoff), checked against the catalogue's size and sha256 when
known, then renamed into place: a failed check deletes the partial file, and nothing a later run
trusts is ever half-written. A mirror (``--mirror`` / ``STBENCH_MIRROR``: a folder or a URL) replaces the
entry's ``base_url``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

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


RETRIES = 4
BACKOFF_S = 1.0


class _Transient(Exception):
    """A network failure worth retrying (the partial file is kept and resumed)."""


def _download(location: str, part: Path, label: str, progress: Callable[..., None] | None, timeout: float) -> None:
    """Fetch ``location`` into ``part``, resuming with an HTTP Range request when ``part`` exists."""
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
        try:
            shutil.copyfile(path, part)
        except FileNotFoundError:
            raise DataError(f"cannot read {path} (no such file); check the mirror folder") from None
        return
    if not location.startswith(("https://", "http://")):
        raise DataError(f"unsupported URL scheme in {location}; use https://, a folder or file://")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(location, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return  # the partial file is already complete
        if e.code in (408, 429) or e.code >= 500:
            raise _Transient(f"HTTP {e.code}") from None
        raise DataError(f"download of {location} failed: HTTP {e.code}; check the URL or use --mirror") from None
    except (urllib.error.URLError, OSError) as e:
        raise _Transient(str(getattr(e, "reason", e))) from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start again
        if "text/html" in response.headers.get("Content-Type", "") and not label.endswith((".html", ".htm")):
            raise DataError(f"{location} sent an HTML page instead of {label}; the file may have moved: "
                            f"check the URL or use --mirror")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(f"connection lost after {done} bytes ({type(e).__name__})") from None
                if not block:
                    break
                out.write(block)
                done += len(block)
                if progress:
                    progress(label, done, total)
        if total is not None and done < total:
            raise _Transient(f"connection closed after {done} of {total} bytes")


def fetch_source(entry: DatasetEntry, source: Mapping[str, Any], root: Path | None = None, mirror: str | None = None,
                 progress: Callable[..., None] | None = None, timeout: float = 60.0) -> Path:
    """Download one source to a ``.part`` file (resumed after an interruption, retried with
    backoff), verify size and sha256, then rename it into place."""
    target = dataset_folder(entry, root) / source["path"]
    if target.is_file() and ("size" not in source or target.stat().st_size == source["size"]):
        if "sha256" not in source or sha256_of(target) == source["sha256"]:
            return target
    location = source_location(entry, source, mirror)
    part = target.with_name(target.name + ".part")
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(RETRIES):
            try:
                _download(location, part, source["path"], progress, timeout)
                break
            except _Transient as e:
                if attempt == RETRIES - 1:
                    raise DataError(f"cannot download {location} ({e}) after {RETRIES} tries; run the same command "
                                    f"again to resume, check the network, or use --mirror FOLDER|URL") from None
                time.sleep(BACKOFF_S * 2**attempt)
        size = part.stat().st_size
        if "size" in source and size != source["size"]:
            part.unlink()
            raise DataError(f"{source['path']} from {location} has {size} bytes, expected {source['size']}; "
                            f"the file changed upstream or the mirror is wrong; nothing was kept")
        if "sha256" in source:
            got = sha256_of(part)
            if got != source["sha256"]:
                part.unlink()
                raise DataError(f"checksum mismatch for {source['path']} from {location}: got {got[:16]}..., "
                                f"expected {source['sha256'][:16]}...; nothing was kept")
        os.replace(part, target)
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
