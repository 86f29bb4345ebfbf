"""The registries, at the bottom of the package: one :class:`Registry` per kind of pluggable thing.

Nothing here imports a member: methods, datasets and sequence backbones register themselves
(``@register_method("simclr")``) and each package's ``__init__`` imports its members so they do
(timm's way). Looking a name up therefore needs no upward import: ``config`` types the
``method`` section from :data:`METHODS` without importing ``selfsup.methods``.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from selfsup.core.errors import ConfigError, DataError, SelfsupError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to an object; looking up an unknown name raises a ConfigError with the closest name."""

    def __init__(self, kind: str, config_key: str, error: type[SelfsupError] = ConfigError):
        self.kind = kind
        self.config_key = config_key
        self.error = error
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
            raise self.error(
                f"unknown {self.kind} '{name}' for {self.config_key}{hint}; "
                f"known: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


# The registries themselves. Their members live in selfsup.methods, selfsup.data and
# selfsup.models; `import selfsup` imports all three packages, so every name is registered.
METHODS: Registry = Registry("method", "method.name")  # name -> Method subclass
DATASETS: Registry = Registry("dataset", "data.name", error=DataError)  # name -> loader fn(split, **options) -> ImageDataset
SEQUENCE_BACKBONES: Registry = Registry("sequence backbone", "backbone.name")  # name -> nn.Module factory
