"""One registry class for every kind of pluggable thing (methods; datasets use the same shape)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from selfsup.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to an object; looking up an unknown name raises a ConfigError with the closest name."""

    def __init__(self, kind: str, config_key: str):
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}' for {self.config_key}{hint}; "
                f"known: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
