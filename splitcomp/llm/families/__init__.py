"""Model-family plugins: one module per architecture, each registering a :class:`Family`.

A new family is one module here (an edge part, a tail part, a ``@register_family`` class)
plus one line in ``_BUILTIN``.
"""

from __future__ import annotations

import importlib

from .base import EdgePart, Family, TailPart, family_for, register_family, supported_model_types

_BUILTIN = ("llama", "gpt2")

for _mod in _BUILTIN:
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["EdgePart", "Family", "TailPart", "family_for", "register_family",
           "supported_model_types"]
