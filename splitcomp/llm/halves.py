"""The two halves of a split causal LM, each with its own KV caches.

:class:`EdgeHalf` (embeddings + blocks ``[0, k)``) turns new token ids into the hidden states
that cross the cut; :class:`ServerHalf` (blocks ``[k, L)`` + final norm + LM head) turns them
into logits, keeping one :class:`TailSession` (a KV cache and a position) per client. Each side
derives positions from its own cache length and builds its own mask, so per decode step only
one token's hidden state crosses; the whole prompt crosses once, at prefill. Each block gets
the mask of its own attention window (full causal or sliding, :func:`attention_masks`), and a
sliding-window block's cache keeps only its window, as the library's cache does.

:meth:`ServerHalf.step_batch` runs the waiting decode steps of many sessions as one forward
(continuous batching): one matmul per weight for all of them, attention over each session's
own cache (right-padded, masked; a sliding-window block's keys start at each row's own
offset, and its mask says so).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from .cache import BatchedKV, KVCache, attention_masks, positions_for
from .families import Family, family_for


def _check_split(family: type[Family], model: nn.Module, split: int) -> int:
    n = family.num_layers(model)
    if not 0 <= split <= n:
        raise ValueError(f"split {split} outside [0, {n}] for a {n}-block {family.name} model")
    return n


def _attn_impl(model: nn.Module) -> str:
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


class _Side:
    """What both halves share: their blocks' attention windows, their caches and masks."""

    part: nn.Module
    attn_implementation: str
    #: attention window of each block this side runs (None: full attention)
    block_windows: list[int | None]
    _cache_windows: dict[int, int]

    def _init_windows(self, model: nn.Module, start: int, stop: int) -> None:
        windows = self.family.windows(model)  # type: ignore[attr-defined]
        self.block_windows = windows[start:stop]
        self._cache_windows = {i: w for i, w in enumerate(windows)
                               if w is not None and start <= i < stop}
        self.dtype = next(iter(self.part.parameters()), torch.zeros(())).dtype

    def new_cache(self) -> KVCache:
        """An empty KV cache for this side's blocks (sliding-window blocks keep their window)."""
        return KVCache(self._cache_windows)

    def masks(self, past: Sequence[int], q_len: int) -> dict[int | None, torch.Tensor | None]:
        """The attention mask of each window this side's blocks use."""
        return attention_masks(past, q_len, self.attn_implementation, self.dtype,
                               self.block_windows)


class EdgeHalf(_Side):
    """Embeddings + blocks ``[0, split)`` of ``model`` and one sequence's KV cache."""

    def __init__(self, model: nn.Module, split: int, family: type[Family] | None = None) -> None:
        self.family = family or family_for(model)
        self.num_layers = _check_split(self.family, model, split)
        self.split = split
        self.hidden_size = self.family.hidden_size(model)
        self.part = self.family.edge(model, split).eval()
        self.attn_implementation = _attn_impl(model)
        self._init_windows(model, 0, split)
        self.cache = self.new_cache()

    @property
    def position(self) -> int:
        """Tokens this edge has processed."""
        return len(self.cache)

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """New token ids (T,) or (1, T) -> hidden states (1, T, H) to send."""
        ids = input_ids.reshape(1, -1).long()
        past = [len(self.cache)]
        hidden = self.part(ids, positions_for(past, ids.shape[1]), self.masks(past, ids.shape[1]),
                           self.cache)
        self.cache.advance(ids.shape[1])
        return hidden

    @torch.inference_mode()
    def forward_full(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Stateless teacher-forced pass: ids (B, T) from position 0 -> hidden (B, T, H)."""
        b, t = input_ids.shape
        past = [0] * b
        return self.part(input_ids.long(), positions_for(past, t), self.masks(past, t), None)

    def reset(self) -> None:
        self.cache.clear()


class TailSession:
    """One client's state on the server: a KV cache over blocks ``[k, L)``."""

    def __init__(self, server: ServerHalf, session_id: int) -> None:
        self.server = server
        self.id = session_id
        self.cache = server.new_cache()

    @property
    def position(self) -> int:
        """Tokens this session has received."""
        return len(self.cache)

    @property
    def kv_bytes(self) -> int:
        return self.cache.nbytes

    def step(self, hidden: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states (1, T, H) from the edge -> logits (1, T, V), or (1, 1, V) of the last
        position only."""
        return self.server.step(self, hidden, last_only)

    def reset(self) -> None:
        self.cache.clear()


class ServerHalf(_Side):
    """Blocks ``[split, L)`` + final norm + LM head, shared by any number of sessions."""

    def __init__(self, model: nn.Module, split: int, family: type[Family] | None = None) -> None:
        self.family = family or family_for(model)
        self.num_layers = _check_split(self.family, model, split)
        self.split = split
        self.hidden_size = self.family.hidden_size(model)
        self.part = self.family.tail(model, split).eval()
        self.attn_implementation = _attn_impl(model)
        self._init_windows(model, split, self.num_layers)
        #: bytes of KV cache each token adds to a session (for a runtime's memory cap; an
        #: upper bound when sliding-window blocks drop what left their window)
        self.kv_bytes_per_token = (self.family.kv_width(model) * (self.num_layers - split)
                                   * torch.finfo(self.dtype).bits // 8)
        self._ids = itertools.count(1)

    def new_session(self) -> TailSession:
        """A fresh session (empty KV cache). Ids here are counters; a network runtime wraps
        sessions with its own unguessable ids."""
        return TailSession(self, next(self._ids))

    def _check_session(self, session: TailSession) -> None:
        if session.server is not self:
            raise ValueError(f"session {session.id} belongs to another server half")

    def _check(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[2] != self.hidden_size:
            raise ValueError(f"expected hidden states (1, T, {self.hidden_size}), "
                             f"got {tuple(hidden.shape)}")
        return hidden.to(self.dtype)

    @torch.inference_mode()
    def step(self, session: TailSession, hidden: torch.Tensor,
             last_only: bool = False) -> torch.Tensor:
        """One step of one session: hidden (1, T, H) -> logits (1, T, V), or (1, 1, V) of the
        last position only (all a greedy step needs). A step that fails leaves the session as
        it was."""
        self._check_session(session)
        hidden = self._check(hidden)
        t = hidden.shape[1]
        past = [len(session.cache)]
        keep = torch.tensor([t - 1]) if last_only and t > 1 else None
        try:
            logits = self.part(hidden, positions_for(past, t), self.masks(past, t),
                               session.cache, keep)
        except BaseException:
            session.cache.rollback()
            raise
        session.cache.advance(t)
        return logits

    @torch.inference_mode()
    def step_batch(self, sessions: Sequence[TailSession],
                   hiddens: Sequence[torch.Tensor], last_only: bool = False
                   ) -> list[torch.Tensor]:
        """Steps of several sessions: single-token steps share one forward, longer ones
        (prefills) run alone. Returns each session's logits (1, T, V), in order. If the shared
        forward fails, none of its sessions advances."""
        if len(sessions) != len(hiddens):
            raise ValueError("one hidden-state tensor per session")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session may appear once per batch")
        for s in sessions:
            self._check_session(s)
        out: list[torch.Tensor | None] = [None] * len(sessions)
        hiddens = [self._check(h) for h in hiddens]
        single = [i for i, h in enumerate(hiddens) if h.shape[1] == 1]
        for i, h in enumerate(hiddens):
            if h.shape[1] != 1:
                out[i] = self.step(sessions[i], h, last_only)
        if len(single) == 1:
            out[single[0]] = self.step(sessions[single[0]], hiddens[single[0]])
        elif single:
            caches = [sessions[i].cache for i in single]
            past = [len(c) for c in caches]
            batch = torch.cat([hiddens[i] for i in single], dim=0)
            try:
                logits = self.part(batch, positions_for(past, 1), self.masks(past, 1),
                                   BatchedKV(caches))
            except BaseException:
                for c in caches:
                    c.rollback()
                raise
            for row, i in enumerate(single):
                caches[row].advance(1)
                out[i] = logits[row : row + 1]
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def forward_full(self, hidden: torch.Tensor, keep: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Stateless teacher-forced pass: hidden (B, T, H) from position 0 -> logits (B, T, V),
        or (B, len(keep), V) at the positions ``keep`` only."""
        b, t, _ = hidden.shape
        past = [0] * b
        hidden = hidden.to(self.dtype)
        return self.part(hidden, positions_for(past, t), self.masks(past, t), None, keep)
