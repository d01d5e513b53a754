"""Model-family plugins: how each architecture is cut into an edge and a tail part.

:mod:`.generic` cuts any decoder-only causal LM of transformers (Llama, Mistral, Qwen2/3,
Gemma 2/3, Phi-3, ...) in its own decoder-layer list and is the fallback for every model type
without a family of its own. An override is one module here (a :class:`GenericFamily`
subclass with ``@register_family`` and the model types it handles) plus one line in
``_BUILTIN``; it changes only what its architecture does differently (GPT-2's and OPT's learned
positions).
"""

from __future__ import annotations

import importlib

from .base import (
    EdgePart,
    Family,
    Masks,
    TailPart,
    family_for,
    register_fallback,
    register_family,
    supported_model_types,
)
from .generic import GenericEdge, GenericFamily, GenericTail, Layout, find_layout

_BUILTIN = ("gpt2", "opt")

for _mod in _BUILTIN:
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["EdgePart", "Family", "GenericEdge", "GenericFamily", "GenericTail", "Layout",
           "Masks", "TailPart", "family_for", "find_layout", "register_fallback",
           "register_family", "supported_model_types"]
