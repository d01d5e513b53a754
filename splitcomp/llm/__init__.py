"""Split LLM inference: an edge half and a server half of a Hugging Face causal LM, with the
hidden state crossing the cut through a codec, one token per decode step.

    >>> from splitcomp.llm import SplitLM
    >>> lm = SplitLM(model, split=15, codec="fp32")
    >>> for step in lm.generate(prompt_ids, 32): print(step.token, step.bytes_sent)

Data path: ids -> :class:`EdgeHalf` (embeddings, blocks [0, k), its KV cache) -> hidden (1, T, H)
-> :class:`Wire` (codec, bytes counted) -> :class:`TailSession` of a :class:`ServerHalf`
(blocks [k, L), final norm, LM head, one KV cache per session) -> logits.
Any decoder-only causal LM of transformers is cut by the generic family; architectures that
differ (GPT-2's and OPT's learned positions) are small overrides in :mod:`splitcomp.llm.families`.

This package is the model side only (it knows nothing of sockets). Serving a server half over
the network (sessions, codec contexts, continuous batching, the network client ``RemoteLM``)
is :mod:`splitcomp.runtime.llm`. Each side can load only its own tensors from a model folder
(:mod:`splitcomp.llm.partial`, ``SplitLM.from_pretrained``).
"""

from .cache import BatchedKV, KVCache, attention_masks, causal_mask, positions_for, window_offsets
from .families import Family, family_for, register_family, supported_model_types
from .halves import EdgeHalf, ServerHalf, TailSession
from .hidden_wire import Wire, WireStats, decode_hidden, encode_hidden
from .partial import load_side, side_bytes
from .pipeline import SplitLM, Step, as_codec, greedy_unsplit, split_model
from .sampling import Sampling, pick

__all__ = [
    "BatchedKV", "EdgeHalf", "Family", "KVCache", "Sampling", "ServerHalf", "SplitLM", "Step",
    "TailSession", "Wire", "WireStats", "as_codec", "attention_masks", "causal_mask",
    "decode_hidden", "encode_hidden", "family_for", "greedy_unsplit", "load_side", "pick",
    "positions_for", "register_family", "side_bytes", "split_model", "supported_model_types",
    "window_offsets",
]
