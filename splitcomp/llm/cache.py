"""Key/value caches and causal masks, rebuilt on each side of the cut (never sent).

:class:`KVCache` holds one sequence's keys and values for the blocks one side runs, keyed by
the blocks' own layer indices. It offers the one method Hugging Face attention layers call,
``update(keys, values, layer_idx)``, so the model's own blocks run on it unchanged.
:class:`BatchedKV` lets several sequences at different lengths share one forward (continuous
batching): each row's new keys go into its own cache, the layer sees them right-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class KVCache:
    """One sequence's keys/values: ``{layer_idx: (keys, values)}``, each (1, heads, S, d)."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._length = 0

    def __len__(self) -> int:
        """Tokens seen (positions given out so far)."""
        return self._length

    def advance(self, n: int) -> None:
        """Count ``n`` new tokens once the step that stored them has run."""
        self._length += n

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values of one layer; return the layer's whole history."""
        past = self.layers.get(layer_idx)
        if past is not None:
            keys = torch.cat([past[0], keys], dim=-2)
            values = torch.cat([past[1], values], dim=-2)
        self.layers[layer_idx] = (keys, values)
        return keys, values

    def rollback(self) -> None:
        """Drop keys/values beyond the counted tokens (what a failed step left behind)."""
        n = self._length
        self.layers = {i: (k[..., :n, :], v[..., :n, :]) for i, (k, v) in self.layers.items()
                       if n > 0}

    def truncate(self, n: int) -> None:
        """Forget every token after the first ``n`` (undo steps the other side refused)."""
        self._length = min(self._length, n)
        self.rollback()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors (for memory caps)."""
        return sum(k.nbytes + v.nbytes for k, v in self.layers.values())

    def clear(self) -> None:
        self.layers.clear()
        self._length = 0


class BatchedKV:
    """A batch view over several :class:`KVCache`: row ``b`` of each update goes to cache ``b``;
    the layer gets every row's history right-padded to the longest (padding is masked)."""

    def __init__(self, caches: Sequence[KVCache]) -> None:
        self.caches = list(caches)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = [], []
        for b, cache in enumerate(self.caches):
            k, v = cache.update(keys[b : b + 1], values[b : b + 1], layer_idx)
            ks.append(k)
            vs.append(v)
        return _pad_stack(ks), _pad_stack(vs)


def _pad_stack(parts: list[torch.Tensor]) -> torch.Tensor:
    longest = max(p.shape[-2] for p in parts)
    if all(p.shape[-2] == longest for p in parts):
        return torch.cat(parts, dim=0)
    out = parts[0].new_zeros((len(parts), *parts[0].shape[1:-2], longest, parts[0].shape[-1]))
    for b, p in enumerate(parts):
        out[b, ..., : p.shape[-2], :] = p[0]
    return out


def positions_for(past: Sequence[int], q_len: int) -> torch.Tensor:
    """Positions (B, q_len) of the new tokens of sequences that have seen ``past[b]`` tokens."""
    base = torch.as_tensor(list(past), dtype=torch.long)[:, None]
    return base + torch.arange(q_len, dtype=torch.long)[None, :]


def causal_mask(past: Sequence[int], q_len: int, attn_implementation: str,
                dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The attention mask a Hugging Face layer expects for new tokens after ``past[b]`` cached.

    Key ``j`` is visible to query ``t`` of row ``b`` iff ``j <= past[b] + t`` (which also hides
    right padding). Shape (B, 1, q_len, max(past) + q_len). Built as the unsplit model builds
    it, so the halves compute what it computes: ``sdpa`` gets None when nothing needs masking
    (one token, or a first chunk it can run as ``is_causal``) and a boolean mask otherwise;
    ``eager`` gets an additive float mask (0 / dtype min) always.
    """
    past = list(past)
    uniform = len(set(past)) == 1
    if attn_implementation == "sdpa" and uniform and (q_len == 1 or past[0] == 0):
        return None
    kv_len = max(past) + q_len
    limit = positions_for(past, q_len)[:, None, :, None]  # (B, 1, T, 1)
    visible = torch.arange(kv_len)[None, None, None, :] <= limit
    if attn_implementation == "sdpa":
        return visible
    if attn_implementation != "eager":
        raise ValueError(f"attention implementation {attn_implementation!r} not supported; "
                         "load the model with attn_implementation='eager' or 'sdpa'")
    zero = torch.zeros((), dtype=dtype)
    return torch.where(visible, zero, torch.finfo(dtype).min)
