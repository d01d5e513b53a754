"""The model-family plugin interface: how to cut one architecture into an edge and a tail part.

A family knows where a Hugging Face causal LM keeps its embeddings, blocks, final norm and LM
head, and what each side must rebuild locally (positions, rotary tables) so that nothing but
the hidden state crosses the cut. Everything else (caches, masks, codecs, sessions) is generic.

:func:`family_for` picks the family registered for ``config.model_type``, else the fallback
(:mod:`.generic`, any decoder-only causal LM whose parts it can find), which raises a one-line
``ValueError`` naming why a model cannot be cut.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

_FAMILIES: dict[str, type[Family]] = {}
_FALLBACK: list[type[Family]] = []

#: attention masks by window: None for full attention, else the sliding window in tokens
Masks = Mapping[int | None, torch.Tensor | None]


class EdgePart(nn.Module, abc.ABC):
    """Embeddings + blocks ``[0, k)``: ``(ids, positions, masks, cache) -> hidden``."""

    @abc.abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                masks: Masks, cache: Any) -> torch.Tensor:
        """``input_ids``/``positions``: (B, T) -> hidden states (B, T, H) at the cut; each
        block takes ``masks[its window]``."""


class TailPart(nn.Module, abc.ABC):
    """Blocks ``[k, L)`` + final norm + LM head: ``(hidden, positions, masks, cache) -> logits``."""

    @abc.abstractmethod
    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                masks: Masks, cache: Any,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden``: (B, T, H), ``positions``: (B, T) -> logits (B, T, V); only at the
        positions ``keep`` (indices along T) when given: the LM head is the costly part."""


class Family(abc.ABC):
    """One architecture family; subclasses register with :func:`register_family`."""

    name: ClassVar[str] = ""
    #: ``config.model_type`` values this family handles
    model_types: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    @abc.abstractmethod
    def num_layers(model: nn.Module) -> int:
        """Number of transformer blocks."""

    @staticmethod
    @abc.abstractmethod
    def hidden_size(model: nn.Module) -> int:
        """Width of the hidden state crossing the cut."""

    @staticmethod
    @abc.abstractmethod
    def kv_width(model: nn.Module) -> int:
        """Cached numbers per token per block (keys + values), for KV-memory budgets."""

    @classmethod
    def windows(cls, model: nn.Module) -> list[int | None]:
        """Each block's attention window: None (full causal attention) or its sliding window."""
        return [None] * cls.num_layers(model)

    @classmethod
    def check(cls, model: nn.Module) -> None:
        """Raise a one-line ``ValueError`` if this family cannot cut ``model`` (a family
        registered for its model type accepts it)."""
        return None

    @staticmethod
    @abc.abstractmethod
    def edge(model: nn.Module, split: int) -> EdgePart:
        """The edge part (shares the model's modules, copies no weights)."""

    @staticmethod
    @abc.abstractmethod
    def tail(model: nn.Module, split: int) -> TailPart:
        """The tail part (shares the model's modules, copies no weights)."""


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family findable by its ``model_types``."""
    for mt in cls.model_types:
        if mt in _FAMILIES and _FAMILIES[mt] is not cls:
            raise ValueError(f"model type {mt!r} already handled by {_FAMILIES[mt].name!r}")
        _FAMILIES[mt] = cls
    return cls


def register_fallback(cls: type[Family]) -> type[Family]:
    """Class decorator: the family for model types no family names (its :meth:`Family.check`
    says whether it can cut a model)."""
    _FALLBACK[:] = [cls]
    return cls


def family_for(model: nn.Module) -> type[Family]:
    """The family handling ``model``: the one registered for ``model.config.model_type``,
    else the fallback if it can cut the model (a one-line ``ValueError`` saying why not)."""
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    if mt in _FAMILIES:
        return _FAMILIES[mt]
    if config is None or not _FALLBACK:
        known = ", ".join(sorted(_FAMILIES)) or "none"
        raise ValueError(f"no split family for model type {mt!r} (not a Hugging Face causal "
                         f"LM); known: {known}")
    _FALLBACK[0].check(model)
    return _FALLBACK[0]


def supported_model_types() -> list[str]:
    """Model types with a family of their own, sorted (others go to the fallback)."""
    return sorted(_FAMILIES)

