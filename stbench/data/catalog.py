"""datasets.toml: the flat catalogue of datasets, one complete table per dataset.

The packaged catalogue lives beside this module; users add their own files with the same schema
through ``stbench --catalog FILE`` or ``STBENCH_CATALOG`` (paths separated by ``os.pathsep``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CatalogError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGED = Path(__file__).with_name("datasets.toml")
SPLITS = ("single", "all", "patients")
GENE_SETS = ("hvg", "heg", "all")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    reader: str
    slides: tuple[str, ...]
    query: tuple[str, ...]
    genes: Mapping[str, Any]
    source_file: str
    split: str = "single"
    description: str = ""
    patients: Mapping[str, str] = field(default_factory=dict)
    harmony: bool | str = False
    pixel_size_um: float | None = None
    patch_px: int = 256
    root: str = ""
    base_url: str = ""
    citation: str = ""
    license: str = ""
    sources: tuple[Mapping[str, Any], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    expected_spots: Mapping[str, int] = field(default_factory=dict)

    @property
    def gene_set(self) -> str:
        return self.genes["set"]


def _list_of_str(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _table_of(kind: type) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v.values())


_FIELDS: dict[str, tuple[Any, str, bool]] = {
    "reader": (lambda v: isinstance(v, str), "a string", True),
    "slides": (_list_of_str, "a list of strings", True),
    "query": (_list_of_str, "a list of strings", True),
    "genes": (lambda v: isinstance(v, dict), "a table like {set = \"hvg\", n_per_slide = 1000}", True),
    "split": (lambda v: v in SPLITS, "one of " + ", ".join(SPLITS), False),
    "description": (lambda v: isinstance(v, str), "a string", False),
    "patients": (_table_of(str), "a table slide -> patient", False),
    "harmony": (lambda v: isinstance(v, bool) or v in ("genes", "pca"),
                "true (= \"genes\"), false, \"genes\" (Harmony on the spots x genes matrix, as the paper) or "
                "\"pca\" (on 50 principal components, mapped back to genes: bounded memory for large slides)", False),
    "pixel_size_um": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number", False),
    "patch_px": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer", False),
    "root": (lambda v: isinstance(v, str), "a string", False),
    "citation": (lambda v: isinstance(v, str), "a string", False),
    "license": (lambda v: isinstance(v, str), "a string", False),
    "base_url": (lambda v: isinstance(v, str) and v.endswith("/"), "a URL ending in /", False),
    "sources": (lambda v: isinstance(v, list) and all(isinstance(x, dict) and isinstance(x.get("path"), str) for x in v),
                "a list of tables {path, url, sha256, size, gunzip, discover}", False),
    "params": (lambda v: isinstance(v, dict), "a table", False),
    "expected_spots": (_table_of(int), "a table slide -> integer", False),
}


_SOURCE_KEYS: dict[str, tuple[Any, str]] = {
    "path": (lambda v: isinstance(v, str) and v and not v.startswith("/") and ".." not in v.split("/"),
             "a relative path inside the dataset folder"),
    "url": (lambda v: isinstance(v, str) and v != "", "a URL, absolute or relative to base_url"),
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
               "64 lowercase hex digits"),
    "size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a byte count"),
    "discover": (lambda v: isinstance(v, str) and bool(v.strip()), "a glob of the upstream file name"),
    "gunzip": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_source(src: Mapping[str, Any], where: str, has_base_url: bool) -> None:
    """A source is ``{path, url?, sha256?, size?, gunzip?, discover?}``: ``path`` is where the file lies in the dataset
    folder (and in a mirror); ``url`` absolute or relative to ``base_url`` (default ``base_url + path``);
    ``sha256``/``size`` describe the stored file (decompressed when ``gunzip``)."""
    unknown = set(src) - set(_SOURCE_KEYS)
    if unknown:
        raise CatalogError(f"{where} source '{src['path']}' has unknown key(s) {', '.join(sorted(unknown))}"
                           f"{did_you_mean(sorted(unknown)[0], _SOURCE_KEYS)}")
    for key, (ok, expected) in _SOURCE_KEYS.items():
        if key in src and not ok(src[key]):
            raise CatalogError(f"{where} source '{src['path']}' key '{key}' must be {expected}, got {src[key]!r}")
    if not has_base_url and "://" not in src.get("url", ""):
        raise CatalogError(f"{where} source '{src['path']}' needs an absolute 'url' or the entry a 'base_url'")


def parse_entry(name: str, raw: Any, source: str) -> DatasetEntry:
    where = f"{source}: dataset '{name}'"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table")
    for key in raw:
        if key not in _FIELDS:
            raise CatalogError(f"{where} has unknown key '{key}'{did_you_mean(key, _FIELDS)}")
    for key, (ok, expected, required) in _FIELDS.items():
        if key not in raw:
            if required:
                raise CatalogError(f"{where} is missing key '{key}' ({expected})")
            continue
        if not ok(raw[key]):
            raise CatalogError(f"{where} key '{key}' must be {expected}, got {raw[key]!r}")
    slides = tuple(raw["slides"])
    if not slides or len(set(slides)) != len(slides):
        raise CatalogError(f"{where} key 'slides' must list distinct slide ids")
    for s in raw["query"]:
        if s not in slides:
            raise CatalogError(f"{where} key 'query' names slide '{s}' that is not in 'slides'")
    genes = raw["genes"]
    if genes.get("set") not in GENE_SETS:
        raise CatalogError(f"{where} key 'genes.set' must be one of {', '.join(GENE_SETS)}, got {genes.get('set')!r}")
    if genes["set"] != "all" and not (isinstance(genes.get("n_per_slide"), int) and genes["n_per_slide"] > 0):
        raise CatalogError(f"{where} key 'genes.n_per_slide' must be a positive integer")
    patients = raw.get("patients", {})
    if raw.get("split") == "patients" and set(patients) != set(slides):
        raise CatalogError(f"{where} uses split = \"patients\" but 'patients' does not cover every slide")
    paths = [src["path"] for src in raw.get("sources", [])]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise CatalogError(f"{where} lists source '{dup}' more than once")
    for src in raw.get("sources", []):
        _check_source(src, where, "base_url" in raw)
    values = {k: v for k, v in raw.items() if k in _FIELDS}
    for k in ("slides", "query"):
        values[k] = tuple(values[k])
    if "sources" in values:
        values["sources"] = tuple(values["sources"])
    if "pixel_size_um" in values:
        values["pixel_size_um"] = float(values["pixel_size_um"])
    return DatasetEntry(name=name, source_file=source, **values)


def load_catalog(path: str | os.PathLike) -> list[DatasetEntry]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"catalogue file {path} does not exist; check --catalog / STBENCH_CATALOG") from None
    except OSError as e:
        raise CatalogError(f"cannot read catalogue file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{path}: not valid TOML ({e})") from None
    return [parse_entry(name, raw, str(path)) for name, raw in data.items()]


def catalog_paths(extra: tuple[str, ...] = (), env: Mapping[str, str] = os.environ) -> list[Path]:
    """The packaged catalogue, then ``STBENCH_CATALOG`` files, then ``--catalog`` files."""
    paths = [PACKAGED]
    paths += [Path(p) for p in env.get("STBENCH_CATALOG", "").split(os.pathsep) if p]
    paths += [Path(p) for p in extra]
    unique: dict[str, Path] = {}
    for p in paths:  # the same file named twice (env and --catalog) is read once
        unique.setdefault(str(p.expanduser().resolve()), p)
    return list(unique.values())
