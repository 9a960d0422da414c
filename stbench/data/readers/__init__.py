"""Readers turn a catalogue entry's files into stbench datasets."""
from .base import Reader

__all__ = ["Reader"]
