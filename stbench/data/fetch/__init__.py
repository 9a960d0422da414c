"""Verified downloads of a catalogue entry's source files into the data root.

A source ``{path, url, sha256, size, gunzip}`` lands at ``<dataset folder>/<path>``. It comes from
``url`` (absolute, or relative to the entry's ``base_url``; default ``base_url + path``), or, with a mirror
(``--mirror`` / ``STBENCH_MIRROR``: a folder or URL laid out like the dataset folder, e.g. one fetched on
another machine), from ``<mirror>/<path>``.

Each source is streamed to ``<path>.part`` (resumed with an HTTP Range request after an interruption,
retried with backoff), hashed while it is written, checked, then renamed into place; a failed check
deletes the partial file, so nothing a later run trusts is ever half-written.

- ``gunzip = true``: gzip bytes (as GEO serves ``*_Merged.tiff.gz``) are decompressed on the fly, so
  ``path`` names the decompressed file; uncompressed bytes (a mirror holding a fetched copy) are kept as
  they are. ``size`` and ``sha256`` always describe the file on disk, i.e. the decompressed result, so a
  dataset folder can be checked without the download. A gzip download that is cut restarts from the
  beginning (a decompressor cannot resume mid-stream); a gzip stream that ends early (damaged
  upstream file) is an error and nothing is kept.
- ``discover = "GLOB"``: the upstream name is not known exactly; the one file matching GLOB in the
  directory listing of ``url``'s folder is fetched (GEO's per-sample ``suppl/`` index). Mirrors hold
  the file at ``path`` and need no listing.
- Checksums: the catalogue's ``sha256``/``size``; where it gives no ``sha256``, the first download
  records sha256 and size in ``<dataset folder>/stbench-lock.json`` and later fetches verify against it.
- Upstream sources must be ``https://`` (plain HTTP is refused except to this machine); a mirror is
  the user's choice and may be a folder, ``file://``, ``http://`` or ``https://``.
- Failures are one line naming the file and the fix: network (after retries; suggests ``--mirror``),
  HTML pages instead of data, wrong size or checksum, damaged gzip, full or unwritable disk (the
  partial file is deleted).

We stream with urllib rather than pooch: pooch neither resumes with HTTP Range nor gunzips while
downloading (its ``Decompress`` processor needs the whole ``.gz`` on disk first), and hashlib is all
the hashing we need.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from ..catalog import DatasetEntry
from .discover import discover
from .lock import DownloadLock
from .sink import DiskSink, GzipError
from ...errors import DataError, StbenchError
from ..locations import data_root, mirror as default_mirror

CHUNK = 1 << 20
RETRIES = 4
BACKOFF_S = 1.0


def dataset_folder(entry: DatasetEntry, root: Path | None = None) -> Path:
    return (root or data_root()) / (entry.root or entry.name)


def source_location(entry: DatasetEntry, source: Mapping[str, Any], mirror: str | None = None) -> str:
    """The URL or local path a source is fetched from."""
    if mirror:
        return mirror.rstrip("/") + "/" + source["path"]
    url = source.get("url")
    if not url:
        return entry.base_url + source["path"]
    return url if "://" in url else entry.base_url + url


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def source_problems(entry: DatasetEntry, root: Path | None = None) -> list[tuple[str, str]]:
    """``(path, problem)`` for every source that is absent (``"missing"``) or of the wrong size
    (``"12 bytes, expected 3990230"``) in the dataset folder."""
    folder = dataset_folder(entry, root)
    out = []
    for src in entry.sources:
        p = folder / src["path"]
        if not p.is_file():
            out.append((src["path"], "missing"))
        elif "size" in src and p.stat().st_size != src["size"]:
            out.append((src["path"], f"{p.stat().st_size} bytes, expected {src['size']}"))
    return out


def missing_sources(entry: DatasetEntry, root: Path | None = None) -> list[str]:
    """Source paths absent from the dataset folder or of the wrong size."""
    return [path for path, _ in source_problems(entry, root)]


class _Transient(Exception):
    """A network failure worth retrying (the partial file is kept and resumed)."""


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def _copy_local(location: str, part: Path, label: str, progress: Callable[..., None] | None,
                gunzip: bool) -> tuple[str, int]:
    path = Path(location.removeprefix("file://"))
    try:
        src = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); check the mirror folder") from None
    with src, DiskSink(part, gunzip=gunzip) as sink:
        total, done = os.fstat(src.fileno()).st_size, 0
        while True:
            try:
                block = src.read(CHUNK)
            except OSError as e:
                raise DataError(f"cannot read {path} ({e.strerror}); check the mirror folder") from None
            if not block:
                return sink.finish()
            sink.write(block)
            done += len(block)
            if progress:
                progress(label, done, total, unit="bytes")


def _download(location: str, part: Path, label: str, progress: Callable[..., None] | None, timeout: float,
              gunzip: bool = False) -> tuple[str, int]:
    """Fetch ``location`` into ``part`` (resuming with an HTTP Range request when ``part`` exists and the
    source is not gunzipped); the sha256 and size of ``part``."""
    if _is_local(location):
        return _copy_local(location, part, label, progress, gunzip)
    if not location.startswith(("https://", "http://")):
        raise DataError(f"unsupported URL scheme in {location}; use https://, a folder or file://")
    offset = part.stat().st_size if part.exists() and not gunzip else 0
    request = urllib.request.Request(location, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            with DiskSink(part, append=True) as sink:  # the partial file is already complete
                return sink.finish()
        if e.code in (408, 429) or e.code >= 500:
            raise _Transient(f"HTTP {e.code}") from None
        hint = "; the file may have moved or been renamed upstream" if e.code in (403, 404, 410) else ""
        raise DataError(f"download of {location} failed: HTTP {e.code}{hint}; fix the source in the catalogue "
                        f"or use --mirror FOLDER|URL") from None
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
        with DiskSink(part, append=offset > 0, gunzip=gunzip) as sink:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(f"connection lost after {done} bytes ({type(e).__name__})") from None
                if not block:
                    break
                sink.write(block)
                done += len(block)
                if progress:
                    progress(label, done, total, unit="bytes")
            if total is not None and done < total:
                raise _Transient(f"connection closed after {done} of {total} bytes")
            return sink.finish()


def _disk_error(e: OSError, folder: Path) -> StbenchError:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StbenchError(f"no space left for {folder} (the partial file was deleted); free disk space there "
                            f"or set STBENCH_DATA to a folder on a larger disk, then fetch again")
    return StbenchError(f"cannot write to {folder} ({e.strerror or e}); make it writable or set STBENCH_DATA "
                        f"to a writable folder")


def _expected(source: Mapping[str, Any], lock: DownloadLock) -> dict[str, Any]:
    """What the stored file must match: the catalogue's size/sha256, else the lock file's record."""
    want = {k: source[k] for k in ("size", "sha256") if k in source}
    want["by"] = "the catalogue"
    recorded = None if "sha256" in source else lock.get(source["path"])
    if recorded:
        want = {"size": recorded["size"], "sha256": recorded["sha256"],
                "by": f"{lock.path} (recorded {recorded.get('recorded', '?')}; delete the entry to accept a new file)"}
    return want


def _matches(path: Path, want: Mapping[str, Any]) -> bool:
    if "size" in want and path.stat().st_size != want["size"]:
        return False
    return "sha256" not in want or sha256_of(path) == want["sha256"]


def _check_https(location: str, dataset: str) -> None:
    """Catalogue downloads go over HTTPS; plain HTTP only to this machine (tests, local servers).
    A mirror is the user's explicit choice and may use either."""
    from urllib.parse import urlsplit

    if location.startswith("http://") and urlsplit(location).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise DataError(f"dataset '{dataset}' lists a plain-HTTP source ({location}); use an https:// URL in the "
                        f"catalogue, or pass it as --mirror if you trust it")


def fetch_source(entry: DatasetEntry, source: Mapping[str, Any], root: Path | None = None, mirror: str | None = None,
                 progress: Callable[..., None] | None = None, timeout: float = 60.0,
                 lock: DownloadLock | None = None) -> Path:
    """Download one source to a ``.part`` file (resumed after an interruption, retried with
    backoff), verify size and sha256, then rename it into place."""
    folder = dataset_folder(entry, root)
    lock = lock or DownloadLock(folder)
    name = source["path"]
    target = folder / name
    want = _expected(source, lock)
    if target.is_file() and _matches(target, want):
        return target
    location = source_location(entry, source, mirror)
    if not mirror:
        _check_https(location, entry.name)
    if source.get("discover") and not mirror:
        location = discover(location.rsplit("/", 1)[0], source["discover"], timeout)
    part = target.with_name(target.name + ".part")
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(RETRIES):
            try:
                sha, size = _download(location, part, name, progress, timeout, bool(source.get("gunzip")))
                break
            except _Transient as e:
                if attempt == RETRIES - 1:
                    raise DataError(f"cannot download {location} ({e}) after {RETRIES} tries; check the network "
                                    f"and run the same command again, or use --mirror FOLDER|URL") from None
                time.sleep(BACKOFF_S * 2**attempt)
        if "size" in want and size != want["size"]:
            part.unlink()
            raise DataError(f"{name} from {location} has {size} bytes, expected {want['size']} by {want['by']}; "
                            f"the file changed upstream or the mirror is wrong; nothing was kept")
        if "sha256" in want and sha != want["sha256"]:
            part.unlink()
            raise DataError(f"checksum mismatch for {name} from {location}: got {sha[:16]}..., expected "
                            f"{want['sha256'][:16]}... by {want['by']}; nothing was kept")
        os.replace(part, target)
    except GzipError as e:
        part.unlink(missing_ok=True)
        raise DataError(f"{name} from {location}: {e}; nothing was kept; fetch again, or check the source "
                        f"or the mirror") from None
    except OSError as e:
        try:
            part.unlink(missing_ok=True)
        except OSError:
            pass
        raise _disk_error(e, target.parent) from None
    if "sha256" not in source and lock.get(name) is None:
        lock.record(name, sha, size, location)
    return target


def fetch_dataset(entry: DatasetEntry, root: Path | None = None, mirror: str | None = None,
                  progress: Callable[..., None] | None = None,
                  notify: Callable[[str], None] | None = None) -> list[Path]:
    """Fetch every source of ``entry``; ``notify`` receives one line when checksums were recorded."""
    if not entry.sources:
        raise DataError(f"dataset '{entry.name}' lists no sources to fetch; put its files in {dataset_folder(entry, root)}")
    mirror = mirror if mirror is not None else default_mirror()
    lock = DownloadLock(dataset_folder(entry, root))
    paths = []
    for i, src in enumerate(entry.sources):
        if progress:
            progress("files", i, len(entry.sources))
        paths.append(fetch_source(entry, src, root, mirror, progress, lock=lock))
    if progress:
        progress("files", len(entry.sources), len(entry.sources))
    if lock.recorded and notify:
        notify(f"{entry.name}: the catalogue gives no checksum for {len(lock.recorded)} file(s); recorded their "
               f"sha256 and size in {lock.path}; later fetches verify against it")
    return paths


__all__ = ["dataset_folder", "source_location", "missing_sources", "source_problems", "fetch_source", "fetch_dataset", "sha256_of"]
