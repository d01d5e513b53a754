"""The model-family plugin interface: how to cut one architecture into an edge and a tail part.

A family knows where a Hugging Face causal LM keeps its embeddings, blocks, final norm and LM
head, and what each side must rebuild locally (positions, rotary tables) so that nothing but
the hidden state crosses the cut. Everything else (caches, masks, codecs, sessions) is generic.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

_FAMILIES: dict[str, type[Family]] = {}


class EdgePart(nn.Module, abc.ABC):
    """Embeddings + blocks ``[0, k)``: ``(ids, positions, mask, cache) -> hidden``."""

    @abc.abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        """``input_ids``/``positions``: (B, T) -> hidden states (B, T, H) at the cut."""


class TailPart(nn.Module, abc.ABC):
    """Blocks ``[k, L)`` + final norm + LM head: ``(hidden, positions, mask, cache) -> logits``."""

    @abc.abstractmethod
    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any,
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


def family_for(model: nn.Module) -> type[Family]:
    """The family handling ``model`` (by ``model.config.model_type``)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return _FAMILIES[mt]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES)) or "none"
        raise ValueError(f"no split family for model type {mt!r}; known: {known}") from None


def supported_model_types() -> list[str]:
    """Model types with a registered family, sorted."""
    return sorted(_FAMILIES)

