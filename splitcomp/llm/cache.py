"""Key/value caches and causal masks, rebuilt on each side of the cut (never sent).

:class:`KVCache` holds one sequence's keys and values for the blocks one side runs, keyed by
the blocks' own layer indices. It offers the one method Hugging Face attention layers call,
``update(keys, values, layer_idx)``, so the model's own blocks run on it unchanged.
A sliding-window layer (Mistral, Qwen2's upper layers, Gemma 2/3's local layers) keeps only
the last ``window - 1`` tokens before each step, as the library's own cache does, so its
attention sees the same keys in the same places; :func:`causal_mask` with ``window`` builds
the matching mask from each row's offset (:func:`window_offsets`).
:class:`BatchedKV` lets several sequences at different lengths share one forward (continuous
batching): each row's new keys go into its own cache, the layer sees them right-padded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch


class KVCache:
    """One sequence's keys/values: ``{layer_idx: (keys, values)}``, each (1, heads, S, d).

    ``windows``: ``{layer_idx: sliding window}`` of the sliding-window layers; such a layer
    holds the tokens from :attr:`starts` ``[layer_idx]`` on, trimmed to the last
    ``window - 1`` when the next step arrives (so undoing one step loses nothing).
    """

    def __init__(self, windows: Mapping[int, int] | None = None) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.windows: dict[int, int] = dict(windows or {})
        #: position of the first token a sliding layer still holds (absent: 0)
        self.starts: dict[int, int] = {}
        self._length = 0

    def __len__(self) -> int:
        """Tokens seen (positions given out so far)."""
        return self._length

    def advance(self, n: int) -> None:
        """Count ``n`` new tokens once the step that stored them has run."""
        self._length += n

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values of one layer; return the layer's history (for a
        sliding-window layer: the last ``window - 1`` tokens before this step, and this step's)."""
        past = self.layers.get(layer_idx)
        window = self.windows.get(layer_idx)
        if past is not None and window is not None:
            start = self.starts.get(layer_idx, 0)
            drop = max(0, self._length - start - (window - 1))
            if drop:
                past = (past[0][..., drop:, :], past[1][..., drop:, :])
                self.starts[layer_idx] = start + drop
        if past is not None:
            keys = torch.cat([past[0], keys], dim=-2)
            values = torch.cat([past[1], values], dim=-2)
        self.layers[layer_idx] = (keys, values)
        return keys, values

    def rollback(self) -> None:
        """Drop keys/values beyond the counted tokens (what a failed step left behind)."""
        n = self._length
        kept = {}
        for i, (k, v) in self.layers.items():
            held = n - self.starts.get(i, 0)
            if held > 0:
                kept[i] = (k[..., :held, :], v[..., :held, :])
        self.layers = kept
        self.starts = {i: s for i, s in self.starts.items() if i in kept}

    def truncate(self, n: int) -> None:
        """Forget every token after the first ``n`` (undo steps the other side refused). A
        sliding-window layer can go back one step at least, but not past what it dropped."""
        if n < self._length:
            for i, start in self.starts.items():
                if n - start < min(n, self.windows[i] - 1):
                    raise ValueError(f"cannot go back to {n} tokens: sliding-window layer {i} "
                                     f"has dropped tokens before {start}")
        self._length = min(self._length, n)
        self.rollback()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors (for memory caps)."""
        return sum(k.nbytes + v.nbytes for k, v in self.layers.values())

    def clear(self) -> None:
        self.layers.clear()
        self.starts.clear()
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


def window_offsets(past: Sequence[int], window: int | None) -> list[int]:
    """Position of the first key a layer sees in each row: 0 with full attention; with a
    sliding window, what a :class:`KVCache` still holds (``past - window + 1``, at least 0)."""
    if window is None:
        return [0] * len(past)
    return [max(0, p - window + 1) for p in past]


def causal_mask(past: Sequence[int], q_len: int, attn_implementation: str,
                dtype: torch.dtype = torch.float32, window: int | None = None
                ) -> torch.Tensor | None:
    """The attention mask a Hugging Face layer expects for new tokens after ``past[b]`` cached.

    Key ``j`` of row ``b`` is the token at position ``offset[b] + j`` (:func:`window_offsets`);
    query ``t`` sees it iff that position is ``<= past[b] + t`` (which also hides right
    padding) and, with a sliding ``window``, ``> past[b] + t - window``. Shape
    (B, 1, q_len, max(past - offset) + q_len). Built as the unsplit model builds it, so the
    halves compute what it computes: ``sdpa`` gets None when nothing needs masking (one token
    or a first chunk it can run as ``is_causal``, all inside the window) and a boolean mask
    otherwise; ``eager`` gets an additive float mask (0 / dtype min) always.
    """
    past = list(past)
    offsets = window_offsets(past, window)
    lengths = [p - o + q_len for p, o in zip(past, offsets, strict=True)]
    kv_len = max(lengths)
    uniform = len(set(past)) == 1
    if (attn_implementation == "sdpa" and uniform and (q_len == 1 or past[0] == 0)
            and (window is None or kv_len < window)):
        return None
    query = positions_for(past, q_len)[:, None, :, None]  # (B, 1, T, 1)
    key = (torch.as_tensor(offsets, dtype=torch.long)[:, None, None, None]
           + torch.arange(kv_len)[None, None, None, :])  # (B, 1, 1, S)
    visible = key <= query
    if window is not None:
        visible = visible & (key > query - window)
    if attn_implementation == "sdpa":
        return visible
    if attn_implementation != "eager":
        raise ValueError(f"attention implementation {attn_implementation!r} not supported; "
                         "load the model with attn_implementation='eager' or 'sdpa'")
    zero = torch.zeros((), dtype=dtype)
    return torch.where(visible, zero, torch.finfo(dtype).min)


def attention_masks(past: Sequence[int], q_len: int, attn_implementation: str,
                    dtype: torch.dtype, windows: Iterable[int | None]
                    ) -> dict[int | None, torch.Tensor | None]:
    """One :func:`causal_mask` per attention window the layers use (None: full attention)."""
    return {w: causal_mask(past, q_len, attn_implementation, dtype, w) for w in set(windows)}
