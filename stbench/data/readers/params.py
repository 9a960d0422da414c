"""Reader parameters (the ``params`` table of a catalogue entry): unknown names are an error, and each value
is checked with a one-line :class:`~stbench.errors.DataError` naming the param and what it must be."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import DataError, did_you_mean
from .text import one_line

#: Default minimum fraction of count spots that must find a position (``min_match_rate``).
MIN_MATCH_RATE = 0.9


def check_params(params: Mapping[str, Any] | None, allowed: Mapping[str, str], where: str) -> dict[str, Any]:
    """``params`` as a dict; unknown keys raise a one-line DataError naming the allowed ones."""
    params = dict(params or {})
    for key in params:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"; known params: {', '.join(allowed)}"
            raise DataError(one_line(f"{where}: unknown reader param '{key}'{hint} (fix the dataset's params table)"))
    return params


def positive_float_param(params: Mapping[str, Any], key: str, where: str) -> float | None:
    """``params[key]`` as a positive float, None when absent."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value > 0):
        raise DataError(one_line(f"{where}: reader param {key} must be a positive number, got {value!r}"))
    return float(value)


def bool_param(params: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    """``params[key]`` (true or false), ``default`` when absent."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise DataError(one_line(f"{where}: reader param {key} must be true or false, got {value!r}"))
    return value


def fraction_param(params: Mapping[str, Any], key: str, default: float, where: str) -> float:
    """``params[key]`` as a float in [0, 1], ``default`` when absent."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(f"{where}: reader param {key} must be a number in [0, 1], got {value!r}")
    return float(value)


def choice_param(params: Mapping[str, Any], key: str, choices: Sequence[str], where: str) -> str:
    """``params[key]``, one of ``choices``; the first choice when absent."""
    value = params.get(key, choices[0])
    if value not in choices:
        raise DataError(f"{where}: reader param {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def pattern_param(params: Mapping[str, Any], key: str, where: str) -> str | None:
    """``params[key]`` as a non-empty file name or glob, None when absent."""
    if key not in params:
        return None
    value = params[key]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: reader param {key} must be a file name or glob, got {value!r}")
    return value


@dataclass(frozen=True)
class ReadParams:
    """One ``read_slide`` call's params, checked: the raw ``values`` and the three every file reader shares."""

    values: dict[str, Any] = field(default_factory=dict)
    #: micrometres per full-resolution pixel; None: estimate it from the spot pitch (or leave it unknown)
    pixel_size_um: float | None = None
    #: fail when spot centres lie outside the image
    check_bounds: bool = True
    #: minimum fraction of count spots that must find a position
    min_match_rate: float = MIN_MATCH_RATE


def read_params(params: Mapping[str, Any] | None, allowed: Mapping[str, str], where: str) -> ReadParams:
    """Check ``params`` against ``allowed`` (name -> help) and parse the shared ones (``pixel_size_um``,
    ``check_bounds``, ``min_match_rate``); the reader reads its own from :attr:`ReadParams.values`."""
    values = check_params(params, allowed, where)
    return ReadParams(values=values,
                      pixel_size_um=positive_float_param(values, "pixel_size_um", where),
                      check_bounds=bool_param(values, "check_bounds", True, where),
                      min_match_rate=fraction_param(values, "min_match_rate", MIN_MATCH_RATE, where))
