"""Test helpers: take items out of a process registry for a block, and put them back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from splitcomp.codecs.contexts import ContextRegistry


@contextlib.contextmanager
def unregistered(registry: ContextRegistry, *keys: int) -> Iterator[None]:
    """Within the block, ``registry`` lacks the items ``keys``; they come back after it."""
    saved = [registry.remove(k) for k in keys]
    try:
        yield
    finally:
        for key, item in zip(keys, saved, strict=True):
            registry.remove(key)
            if item is not None:
                registry.register(item)


@contextlib.contextmanager
def emptied(registry: ContextRegistry) -> Iterator[None]:
    """Within the block, ``registry`` starts empty; after it, it holds what it held before
    (in the same least-recently-used order) and its bound is restored."""
    saved = [registry.get(k) for k in registry.keys()]  # in LRU order: it stays the same
    bound = registry.max_items
    registry.clear()
    try:
        yield
    finally:
        registry.max_items = bound
        registry.clear()
        for item in saved:
            if item is not None:
                registry.register(item)
