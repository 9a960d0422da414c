"""Where a download's bytes go: a ``.part`` file, hashed as it is written, gunzipped on the fly when asked.

``DiskSink(part, append=..., gunzip=...)`` takes the downloaded bytes in blocks. With ``gunzip``, a
stream that starts with the gzip magic (``1f 8b``) is decompressed block by block (concatenated gzip
members included), never holding more than ``OUT_CHUNK`` decompressed bytes at once; a stream without
the magic is stored as it comes. ``finish()`` returns the sha256 and size of the file on disk (the
decompressed bytes) and raises :class:`GzipError` when a gzip stream is damaged or ends early.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
OUT_CHUNK = 1 << 22


class GzipError(Exception):
    """The gzip data of a download is damaged or incomplete."""


class DiskSink:
    def __init__(self, part: Path, *, append: bool = False, gunzip: bool = False) -> None:
        self.size = 0
        self._hash = hashlib.sha256()
        if append and part.exists():
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    self._hash.update(block)
                    self.size += len(block)
        self._fh = open(part, "ab" if append else "wb")
        self._sniff = gunzip
        self._head = b""
        self._z: zlib._Decompress | None = None

    def __enter__(self) -> DiskSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> None:
        if self._sniff:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return
            data, self._head, self._sniff = self._head, b"", False
            if data.startswith(GZIP_MAGIC):
                self._z = zlib.decompressobj(wbits=31)
        if self._z is None:
            self._write(data)
        else:
            self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            if self._z.eof:
                if not data.strip(b"\0"):
                    return  # zero padding after the last member
                self._z = zlib.decompressobj(wbits=31)
            try:
                out = self._z.decompress(data, OUT_CHUNK)
            except zlib.error as e:
                raise GzipError(f"damaged gzip data ({e})") from None
            self._write(out)
            data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> tuple[str, int]:
        """Flush to disk; the sha256 and size of the file written."""
        if self._head:
            self._write(self._head)
            self._head = b""
        if self._z is not None:
            self._write(self._z.flush())
            if not self._z.eof:
                raise GzipError(f"the gzip stream ends early (after {self.size} decompressed bytes)")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._hash.hexdigest(), self.size
