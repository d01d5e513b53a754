"""Both halves in one process (embedded mode): edge -> codec -> bytes -> codec -> server.

The network runtime replaces the direct call between :meth:`Wire.send` and
:meth:`TailSession.step` with a transport; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import codecs
from ..codecs import Codec
from .halves import EdgeHalf, ServerHalf, TailSession
from .hidden_wire import Wire


def as_codec(codec: Codec | str, **params: object) -> Codec:
    """A codec instance from a codec or a registered name (+ parameters)."""
    return codec if isinstance(codec, Codec) else codecs.get(codec, **params)


@dataclass
class Step:
    """What one step of a split generation produced."""

    token: int
    logits: torch.Tensor
    bytes_sent: int


class SplitLM:
    """An edge half, a wire and one session on a server half, wired together in-process."""

    def __init__(self, model: nn.Module, split: int, codec: Codec | str = "fp32",
                 per_token: bool = True, server: ServerHalf | None = None) -> None:
        self._wire_up(EdgeHalf(model, split),
                      server if server is not None else ServerHalf(model, split),
                      codec, per_token)

    def _wire_up(self, edge: EdgeHalf, server: ServerHalf, codec: Codec | str,
                 per_token: bool) -> None:
        if edge.split != server.split:
            raise ValueError(f"the edge cuts at block {edge.split}, the server at {server.split}")
        self.edge = edge
        self.server = server
        self.wire = Wire(as_codec(codec), per_token=per_token, compact=per_token)
        self.session: TailSession = self.server.new_session()

    @classmethod
    def from_halves(cls, edge: EdgeHalf, server: ServerHalf, codec: Codec | str = "fp32",
                    per_token: bool = True) -> SplitLM:
        """Two halves built apart (e.g. each holding only its part, :mod:`.partial`)."""
        lm = cls.__new__(cls)
        lm._wire_up(edge, server, codec, per_token)
        return lm

    @classmethod
    def from_pretrained(cls, path: str | Path, split: int, codec: Codec | str = "fp32",
                        per_token: bool = True, dtype: torch.dtype = torch.float32,
                        attn_implementation: str | None = None) -> SplitLM:
        """Both halves of the model in folder ``path``, each loaded with only its own tensors
        (:func:`~splitcomp.llm.partial.load_side`)."""
        from .partial import load_side

        edge = load_side(path, split, "edge", dtype, attn_implementation)
        server = load_side(path, split, "server", dtype, attn_implementation)
        return cls.from_halves(edge, server, codec, per_token)  # type: ignore[arg-type]

    def forward_step(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """New ids -> (logits of the last one (1, 1, V), bytes sent for them)."""
        blobs = self.wire.send(self.edge.step(input_ids))
        logits = self.session.step(self.wire.receive(blobs), last_only=True)
        self.wire.confirm()
        return logits, sum(len(b) for b in blobs)

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None) -> Iterator[Step]:
        """Greedy generation, one :class:`Step` per new token, as soon as it is known."""
        ids = prompt_ids.reshape(1, -1)
        for _ in range(max_new_tokens):
            logits, sent = self.forward_step(ids)
            token = int(logits[0, -1].argmax())
            yield Step(token, logits[0, -1], sent)
            if eos_token_id is not None and token == eos_token_id:
                return
            ids = torch.tensor([[token]])

    def reset(self) -> None:
        """Forget the sequence on both sides (the wire's byte counts are kept)."""
        self.edge.reset()
        self.session.reset()
        self.wire.forget()


def split_model(model: nn.Module, split: int) -> tuple[EdgeHalf, ServerHalf]:
    """The two halves of ``model`` cut before block ``split`` (sharing its weights)."""
    return EdgeHalf(model, split), ServerHalf(model, split)


@torch.inference_mode()
def greedy_unsplit(model: nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int,
                   eos_token_id: int | None = None) -> tuple[list[int], list[torch.Tensor]]:
    """The reference: greedy tokens (and last-position logits) of the whole model, with the
    library's own KV cache, step by step as :meth:`SplitLM.generate` does it (and as the
    library's ``generate`` does: logits of the last position only)."""
    ids = prompt_ids.reshape(1, -1)
    cache = None
    tokens: list[int] = []
    logits: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        kw = {"cache": cache} if cache is not None else {}
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
        cache = getattr(out, "cache", None) or out.past_key_values
        last = out.logits[0, -1]
        tokens.append(int(last.argmax()))
        logits.append(last)
        if eos_token_id is not None and tokens[-1] == eos_token_id:
            break
        ids = torch.tensor([[tokens[-1]]])
    return tokens, logits
