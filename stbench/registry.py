"""A typed name -> object registry that remembers which plugin added each entry."""
from __future__ import annotations

import fnmatch
from typing import Generic, Iterator, TypeVar

from .errors import PluginError, unknown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def add(self, name: str, item: T, origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{origin}' registered a {self.kind} without a name")
        if name in self._items:
            raise PluginError(
                f"{self.kind} '{name}' is registered by both plugin '{self._origins[name]}' and "
                f"plugin '{origin}'; uninstall one or restrict loading with STBENCH_LOAD_PLUGINS"
            )
        self._items[name] = item
        self._origins[name] = origin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def values(self) -> list[T]:
        """Every item in registration order (the core's first, then plugins' in load order)."""
        return list(self._items.values())

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
