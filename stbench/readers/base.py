"""The Reader interface: what a reader plugin registers."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..catalog import DatasetEntry
    from ..dataset import Dataset


class Reader(ABC):
    """Named by ``name``; the ``reader`` key of a datasets.toml entry selects it."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def make_dataset(self, entry: "DatasetEntry") -> "Dataset":
        """Build the dataset that a catalogue entry declares (cheap: no data is read here)."""
