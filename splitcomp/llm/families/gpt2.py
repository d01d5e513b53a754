"""GPT-2 (``GPT2LMHeadModel``): the generic family plus learned absolute positions.

The edge adds ``wpe(positions)`` to the token embeddings (then GPT-2's embedding dropout, a
no-op in eval); the tail needs no positions at all, only its own causal mask.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import register_family
from .generic import GenericEdge, GenericFamily, Layout


class GPT2Edge(GenericEdge):
    def __init__(self, model: nn.Module, layout: Layout, split: int) -> None:
        super().__init__(model, layout, split)
        self.wpe, self.drop = layout.decoder.wpe, layout.decoder.drop

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.drop(self.embed_tokens(input_ids) + self.wpe(positions))


@register_family
class GPT2Family(GenericFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    extra_parts = ("wpe",)
    edge_class = GPT2Edge
