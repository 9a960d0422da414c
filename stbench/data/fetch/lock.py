"""``<dataset folder>/stbench-lock.json``: checksums recorded at the first download of a source whose
sha256 the catalogue does not declare, so that later fetches (and re-downloads) are verified against it.

Format: ``{"version": 1, "files": {"<source path>": {"sha256", "size", "url", "recorded"}}}``, where
``sha256``/``size`` describe the file as stored (decompressed for ``gunzip`` sources), ``url`` is where it
came from and ``recorded`` the UTC time. The file is rewritten atomically, under a file lock, after each
recorded download.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ...atomic import write_text
from ...errors import DataError, StbenchError

LOCK_NAME = "stbench-lock.json"


def _valid(files: Any) -> bool:
    return isinstance(files, dict) and all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
        for v in files.values())


class DownloadLock:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.recorded: list[str] = []
        self._files: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._files is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                data = {"files": {}}
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read {self.path} ({e}); delete it to record the checksums afresh "
                                f"at the next fetch") from None
            files = data.get("files") if isinstance(data, dict) else None
            if not _valid(files):
                raise DataError(f"{self.path} is not a stbench lock file (expected {{\"files\": {{path: {{sha256, "
                                f"size}}}}}}); delete it to record the checksums afresh at the next fetch")
            self._files = files
        return self._files

    def get(self, path: str) -> Mapping[str, Any] | None:
        return self._load().get(path)

    def record(self, path: str, sha256: str, size: int, url: str) -> None:
        from filelock import FileLock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path.with_name(".stbench-lock.lock"))):  # entries sharing a folder (HVG, HEG)
                self._files = None
                files = self._load()
                files[path] = {"sha256": sha256, "size": size, "url": url,
                               "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                write_text(self.path, json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=1) + "\n")
        except OSError as e:
            raise StbenchError(f"cannot write {self.path} ({e.strerror}); make {self.path.parent} writable or "
                               f"set STBENCH_DATA") from None
        self.recorded.append(path)


__all__ = ["LOCK_NAME", "DownloadLock"]
