"""Typed, one-line, actionable errors. The CLI prints them without a traceback and exits 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class StbenchError(Exception):
    """Base class: the message is one line that names the thing and the fix."""


class UnknownNameError(StbenchError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OptionError(StbenchError, ValueError):
    pass


class CatalogError(StbenchError, ValueError):
    pass


class DataError(StbenchError, ValueError):
    pass


class PluginError(StbenchError):
    pass


class ResultsError(StbenchError, ValueError):
    pass


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    choices = sorted(choices)
    hint = did_you_mean(name, choices)
    if not hint:
        shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        hint = f"; known: {shown}" if choices else f"; no {kind}s are registered"
    return UnknownNameError(f"unknown {kind} '{name}'{hint}")
