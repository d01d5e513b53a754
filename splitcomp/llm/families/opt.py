"""OPT (``OPTForCausalLM``): the generic family plus learned positions and the optional
projections between the embedding width and the hidden width.

The edge adds ``embed_positions`` (OPT's offset-by-2 table) after ``project_in``; the tail
ends with the final layer norm, ``project_out`` and the LM head.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import register_family
from .generic import GenericEdge, GenericFamily, GenericTail, Layout


class OPTEdge(GenericEdge):
    def __init__(self, model: nn.Module, layout: Layout, split: int) -> None:
        super().__init__(model, layout, split)
        self.embed_positions = layout.decoder.embed_positions
        self.project_in = layout.decoder.project_in

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        return hidden + self.embed_positions(None, 0, position_ids=positions)


class OPTTail(GenericTail):
    def __init__(self, model: nn.Module, layout: Layout, split: int) -> None:
        super().__init__(model, layout, split)
        self.project_out = layout.decoder.project_out

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = super().final_norm(hidden)
        return self.project_out(hidden) if self.project_out is not None else hidden


@register_family
class OPTFamily(GenericFamily):
    name = "opt"
    model_types = ("opt",)
    extra_parts = ("embed_positions", "project_in", "project_out")
    edge_class = OPTEdge
    tail_class = OPTTail
