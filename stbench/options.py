"""``-o key=value`` strings -> a model's frozen ``Options`` dataclass, with typed errors.

Ranges are declared where the option is, with :func:`option`::

    lr: float = option(1e-3, gt=0)
    dropout: float = option(0.1, ge=0, lt=1)

:func:`check_options` enforces them (and that every float is finite) for options built from the
command line and for options a caller constructs directly; a subclass that only changes a default
(``batch_size: int = 256``) keeps the range its base class declared.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from .errors import OptionError, did_you_mean

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"malformed option '{pair}': expected key=value, e.g. -o epochs=3")
        out[key.strip()] = value.strip()
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except OptionError as e:
                errors.append(str(e))
        raise OptionError(errors[0] if errors else f"{where}: cannot parse {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if str(c) == str(value) or c == value:
                return c
        raise OptionError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}"
                          f"{did_you_mean(str(value), map(str, choices))}")
    if not isinstance(value, str):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise OptionError(f"{where} expects {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise OptionError(f"{where} expects true or false, got {value!r}")
    if tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            raise OptionError(f"{where} expects {'an integer' if tp is int else 'a number'}, got {value!r}") from None
    if tp in (str, Path):
        return tp(value)
    raise OptionError(f"{where} has an unsupported type {tp!r}")  # a plugin bug, named clearly


@dataclass(frozen=True)
class Bounds:
    """Allowed interval of a numeric option; ``None`` ends are open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violated(self, value: float) -> bool:
        return ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def describe(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        return " and ".join(x for x in (low, high) if x)


def option(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A dataclass field with a declared range, checked by :func:`check_options`."""
    return dataclasses.field(default=default, metadata={"stbench.bounds": Bounds(ge, gt, le, lt)})


def _bounds(opts_cls: type, name: str) -> Bounds | None:
    for klass in opts_cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and "stbench.bounds" in fields[name].metadata:
            return fields[name].metadata["stbench.bounds"]
    return None


def check_options(options: Any, model: str) -> Any:
    """Raise OptionError naming the first option outside its declared range, or a non-finite float."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        where = f"option '{f.name}' of model '{model}'"
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{where} must be a finite number, got {value}")
        bounds = _bounds(type(options), f.name)
        if bounds is not None and bounds.violated(value):
            raise OptionError(f"{where} must be {bounds.describe()}, got {value:g}")
    return options


def check_seed(seed: Any) -> int:
    """Seeds are non-negative integers (numpy's generators refuse negative ones)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}; pass --seed 0 or higher")
    return seed


def build_options(model_cls: type, pairs: Sequence[str] | Mapping[str, Any] = ()) -> tuple[Any, str]:
    """Options for ``model_cls`` from ``key=value`` strings; ``profile=NAME`` applies a preset first.

    Returns ``(options, profile_name)``; the profile is ``"paper"`` (the dataclass defaults)
    unless one is chosen.
    """
    raw: dict[str, Any] = dict(pairs) if isinstance(pairs, Mapping) else parse_pairs(pairs)
    opts_cls = model_cls.Options
    profiles: Mapping[str, Mapping[str, Any]] = getattr(model_cls, "profiles", {}) or {}
    profile = str(raw.pop("profile", "paper"))
    if profile != "paper" and profile not in profiles:
        known = ["paper", *profiles]
        raise OptionError(f"model '{model_cls.name}' has no profile '{profile}'{did_you_mean(profile, known)} "
                          f"(profiles: {', '.join(known)})")
    hints = typing.get_type_hints(opts_cls)
    names = [f.name for f in dataclasses.fields(opts_cls)]
    values: dict[str, Any] = {}
    for source in (profiles.get(profile, {}), raw):
        for key, value in source.items():
            if key not in names:
                hint = did_you_mean(key, names) or (f"; options: {', '.join(names)}" if names else "; it takes no options")
                raise OptionError(f"model '{model_cls.name}' has no option '{key}'{hint}")
            values[key] = _coerce(value, hints[key], f"option '{key}' of model '{model_cls.name}'")
    try:
        options = opts_cls(**values)
    except (TypeError, ValueError) as e:
        raise OptionError(f"model '{model_cls.name}': {e}") from None
    return check_options(options, model_cls.name), profile


def options_dict(options: Any) -> dict[str, Any]:
    """JSON-friendly dict of an Options instance."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def changed_options(options: Any) -> dict[str, Any]:
    """The fields that differ from the dataclass defaults (the paper settings)."""
    default = options_dict(type(options)())
    return {k: v for k, v in options_dict(options).items() if default.get(k) != v}


def profile_changes(model_cls: type, options: Any, profile: str) -> dict[str, Any]:
    """The fields that differ from the chosen profile (what a run label should name)."""
    base = options_dict(build_options(model_cls, {"profile": profile})[0])
    return {k: v for k, v in options_dict(options).items() if base.get(k) != v}
