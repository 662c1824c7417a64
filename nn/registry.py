"""Registries: implementations chosen by a config string.

Attention variants register with `attention.registry.register_attention`
(`model.attention`), feed-forward layers with `models.ffn.register_ffn`
(`model.ffn`). The Transformer block looks classes up by name, so adding a
variant never touches the block.
"""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

T = TypeVar("T", bound=type)


class Registry:
    """Name -> class, with errors that name the config field and the choices."""

    def __init__(self, kind: str, field: str):
        self.kind, self.field = kind, field
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise KeyError(f"{self.field}={name!r} is not a known {self.kind}; choose one of {sorted(self._classes)}")
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __getitem__(self, name: str) -> type:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))
