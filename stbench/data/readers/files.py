"""Finding a slide's files on disk: each role (counts, positions, image, ...) must match exactly one file, and
zero or several matches are a one-line :class:`~stbench.errors.DataError` that says what was expected."""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Iterable, Sequence

from ...errors import DataError
from .text import one_line, shown

#: Names of image files a reader may take as the slide's H&E (matched case-insensitively).
IMAGE_PATTERNS = ("*.tif", "*.tiff", "*.btf", "*.jpg", "*.jpeg", "*.png")


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` (lower-cased) matches one of the (lower-case) glob ``patterns``."""
    return any(fnmatch.fnmatch(name.lower(), pat) for pat in patterns)


def list_files(folders: Sequence[Path], patterns: Sequence[str], exclude: Sequence[str] = ()) -> list[Path]:
    """Files directly in ``folders`` (folder by folder, sorted) named like ``patterns`` and not like ``exclude``."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and matches_any(p.name, patterns)
                            and not matches_any(p.name, exclude))
    return found


def prefer(found: list[Path], name_filter: str | None) -> list[Path]:
    """When several files were found, those whose names contain ``name_filter`` (if any do)."""
    if len(found) > 1 and name_filter:
        return [p for p in found if name_filter.lower() in p.name.lower()] or found
    return found


def exactly_one(found: Sequence[Path], *, none: str | None, several: str) -> Path | None:
    """The single path in ``found``. None found: a DataError with message ``none``, or None when ``none`` is
    None; several: a DataError with message ``several``, where ``{names}`` stands for their names."""
    if len(found) == 1:
        return found[0]
    if not found:
        if none is None:
            return None
        raise DataError(one_line(none))
    raise DataError(one_line(several.replace("{names}", shown([p.name for p in found]))))


def find_by_suffix(folders: Sequence[Path], suffixes: Sequence[str], *, what: str, where: str,
                   required: bool = True, name_filter: str | None = None, expected: str | None = None) -> Path | None:
    """The single file in ``folders`` whose name ends with one of ``suffixes`` (case-insensitive).

    Matches across all folders and suffixes are pooled; when several match and ``name_filter`` is given,
    only names containing it are kept. Zero (when ``required``) or several matches raise a one-line
    :class:`DataError` that lists what was expected.
    """
    found = prefer(list_files(folders, ["*" + s.lower() for s in suffixes]), name_filter)
    looked = " or ".join(str(f) for f in folders)
    expected = expected or "a file named like " + ", ".join(f"*{s}" for s in suffixes)
    return exactly_one(found, none=f"{where}: no {what} found in {looked}; expected {expected}" if required else None,
                       several=f"{where}: several files could be the {what} ({{names}}) in {looked}; "
                               f"keep exactly one ({expected})")


def glob_one(folder: Path, pattern: str, *, what: str, where: str) -> Path:
    """The single file matching ``pattern`` (a name, a glob, or an absolute path) under ``folder``."""
    p = Path(pattern)
    if p.is_absolute():
        matches = [p] if p.is_file() else sorted(q for q in p.parent.glob(p.name) if q.is_file())
    else:
        matches = sorted(q for q in folder.glob(pattern) if q.is_file())
    return exactly_one(matches, none=f"{where}: {what} '{pattern}' matches no file in {folder}; "
                                     f"fix params image (a file name or glob relative to {folder})",
                       several=f"{where}: {what} '{pattern}' matches several files ({{names}}) in {folder}; "
                               f"make params image match one")


def find_image(folders: Sequence[Path], where: str, *, pattern: str | None = None, exclude: Sequence[str] = (),
               name_filter: str | None = None, none: str | None, several: str) -> Path | None:
    """The slide's one image file.

    With ``pattern`` (params image: a name or glob relative to ``folders[0]``, or an absolute path), the one
    file it matches. Otherwise the one file directly in ``folders`` named like :data:`IMAGE_PATTERNS` and not
    like ``exclude`` (names containing ``name_filter`` are preferred when several match); messages ``none``
    and ``several`` as in :func:`exactly_one`.
    """
    if pattern is not None:
        return glob_one(folders[0], pattern, what="image", where=where)
    found = prefer(list_files(folders, IMAGE_PATTERNS, exclude), name_filter)
    return exactly_one(found, none=none, several=several)
