"""Attention variants by config string (`model.attention`).

Variants register themselves with `@register_attention("name")`; the
Transformer block looks the class up here, so adding a variant never
touches the block.
"""
from __future__ import annotations

from typing import Callable, TypeVar

ATTENTION_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_attention(name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        if name in ATTENTION_REGISTRY:
            raise ValueError(f"attention type {name!r} is registered twice")
        ATTENTION_REGISTRY[name] = cls
        return cls

    return deco


def get_attention(name: str) -> type:
    if name not in ATTENTION_REGISTRY:
        raise KeyError(
            f"model.attention={name!r} is not a known attention type; choose one of {sorted(ATTENTION_REGISTRY)}"
        )
    return ATTENTION_REGISTRY[name]
