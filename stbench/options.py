"""``-o key=value`` strings -> a model's frozen ``Options`` dataclass, with typed errors."""
from __future__ import annotations

import dataclasses
import types
import typing
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
        if type(None) in args and isinstance(value, str) and value.lower() in ("none", "null", ""):
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
        return opts_cls(**values), profile
    except (TypeError, ValueError) as e:
        raise OptionError(f"model '{model_cls.name}': {e}") from None


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
