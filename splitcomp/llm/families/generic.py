"""Any decoder-only causal LM of transformers, cut in its own decoder-layer list.

The fallback family (:func:`~.base.family_for` uses it for every model type without a family
of its own). It finds the model's parts by what they are, not by architecture: the decoder
(``get_decoder()``), its input embeddings (with their scaling: Gemma's ``sqrt(hidden)`` lives
in the embedding module), the ``nn.ModuleList`` of ``num_hidden_layers`` blocks, the rotary
embedding (one table for all layers, or one per layer type as Gemma 3's local/global), the
final norm and the output embeddings (LM head, with Gemma 2/3's final logit soft-capping,
Cohere's logit scale and Granite's multipliers). Each block gets the mask of its own
attention kind, full causal or sliding window (Mistral, Qwen2's upper layers, Gemma's
alternating layers), read from the config as the library's own cache reads it.

Every parameter of the model, and every module of the decoder that holds buffers, must belong
to a part it found; anything else (learned or sinusoidal positions, projections) needs an
override: a subclass that names those modules in
``extra_parts`` and overrides :meth:`GenericEdge.embed` or :meth:`GenericTail.final_norm` (see
:mod:`.gpt2`, :mod:`.opt`). Models it cannot cut get a one-line ``ValueError`` saying why.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .base import EdgePart, Family, Masks, TailPart, register_fallback

_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f")
_KINDS = {"full_attention", "sliding_attention"}


@dataclass(frozen=True)
class Layout:
    """Where a causal LM keeps its parts, and each block's attention kind and window."""

    decoder: nn.Module
    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module | None
    rotary: nn.Module | None
    head: nn.Module
    kinds: tuple[str, ...]  #: ``config.layer_types`` style, one per block
    windows: tuple[int | None, ...]  #: sliding window per block (None: full attention)
    cache_arg: str  #: the name under which the blocks take the KV cache


def _fail(model: nn.Module, why: str) -> ValueError:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    return ValueError(f"cannot split model type {mt!r}: {why}")


def _layer_kinds(model: nn.Module, config: Any, n: int) -> tuple[list[str], list[int | None]]:
    """Each block's attention kind and window, read as the library's own cache reads them."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        kinds, kwargs = get_layer_types_and_kwargs(config)
        if isinstance(kwargs, dict):  # transformers < 5.24: one dict for every layer
            kwargs = [kwargs] * len(kinds)
        windows = [kw.get("sliding_window") for kw in kwargs]
    except (ImportError, AttributeError):
        kinds = list(getattr(config, "layer_types", None) or [])
        window = getattr(config, "sliding_window", None)
        if not kinds:
            kinds = ["sliding_attention" if window else "full_attention"] * n
        windows = [window if k == "sliding_attention" else None for k in kinds]
    kinds, windows = list(kinds)[:n], list(windows)[:n]
    odd = sorted(set(kinds) - _KINDS)
    if odd:
        raise _fail(model, f"layer type {odd[0]!r} is not supported (only full and "
                           "sliding-window attention)")
    if len(kinds) != n or any(k == "sliding_attention" and not w for k, w in zip(
            kinds, windows, strict=True)):
        raise _fail(model, "its config does not give every layer's attention window")
    return kinds, [w if k == "sliding_attention" else None for k, w in zip(
        kinds, windows, strict=True)]


def find_layout(model: nn.Module, extra_parts: tuple[str, ...] = ()) -> Layout:
    """The parts of ``model``; ``extra_parts``: decoder attributes an override handles.
    Raises a one-line ``ValueError`` naming why the model cannot be cut."""
    config = getattr(model, "config", None)
    if config is None:
        raise _fail(model, "not a Hugging Face model (no config)")
    if getattr(config, "is_encoder_decoder", False):
        raise _fail(model, "an encoder-decoder model; only decoder-only causal LMs can be cut")
    if getattr(config, "use_bidirectional_attention", False):
        raise _fail(model, "bidirectional attention (not a causal LM)")
    config = config.get_text_config(decoder=True)
    try:
        decoder = model.get_decoder()
    except (AttributeError, ValueError):
        decoder = None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise _fail(model, "no decoder with an LM head found")
    n = getattr(config, "num_hidden_layers", None)
    lists = [m for m in decoder.children() if isinstance(m, nn.ModuleList) and len(m) == n]
    if n is None or len(lists) != 1:
        raise _fail(model, f"no single decoder-layer list of num_hidden_layers={n} blocks")
    embed = decoder.get_input_embeddings()
    norm = next((getattr(decoder, a) for a in _NORMS
                 if isinstance(getattr(decoder, a, None), nn.Module)), None)
    rotary = getattr(decoder, "rotary_emb", None)
    kinds, windows = _layer_kinds(model, config, n)
    cache_arg = _block_arguments(model, lists[0][0])
    known = [embed, lists[0], norm, rotary, head] + [getattr(decoder, a, None)
                                                    for a in extra_parts]
    mine = {id(p) for m in known if m is not None for p in m.parameters()}
    stray = [name for name, p in model.named_parameters() if id(p) not in mine]
    # a module with buffers but no parameters (sinusoidal positions) is as telling
    stray += [f"{name} (buffers)" for name, m in decoder.named_children()
              if all(m is not k for k in known) and next(m.buffers(), None) is not None]
    if stray:
        raise _fail(model, f"{stray[0]!r} is in no part the generic family knows "
                           "(add a family override)")
    return Layout(decoder, embed, lists[0], norm, rotary, head, tuple(kinds), tuple(windows),
                  cache_arg)


_CACHE_ARGS = ("cache", "past_key_values", "layer_past", "past_key_value")
_GIVEN = {"attention_mask", "position_ids", "position_embeddings", "use_cache", *_CACHE_ARGS}


def _block_arguments(model: nn.Module, block: nn.Module) -> str:
    """The name a block takes its cache under; refuses blocks that need an input the generic
    family does not build (Falcon's and MPT's ALiBi biases, say)."""
    params = list(inspect.signature(block.forward).parameters.values())[1:]
    names = {p.name for p in params}
    need = [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in _GIVEN]
    if need:
        raise _fail(model, f"its blocks need {need[0]!r}, which the generic family does not "
                           "build (add a family override)")
    return next((a for a in _CACHE_ARGS if a in names), "cache")


def _rotary_tables(rotary: nn.Module | None, by_kind: bool, hidden: torch.Tensor,
                   positions: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Each layer kind's rotary (cos, sin), as the model computes them ({} without rotary)."""
    if rotary is None:
        return {}
    if by_kind:  # Gemma 3: a local and a global table
        return {k: rotary(hidden, positions, k) for k in set(kinds)}
    table = rotary(hidden, position_ids=positions)
    return dict.fromkeys(set(kinds), table)


class _Blocks(nn.Module):
    """A run of the model's own blocks, each given its kind's mask and rotary table."""

    def __init__(self, layout: Layout, start: int, stop: int | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(list(layout.layers)[start:stop])
        self.kinds = layout.kinds[start:stop]
        self.windows = layout.windows[start:stop]
        self.rotary_emb = layout.rotary
        self.rotary_by_kind = layout.rotary is not None and (
            "layer_type" in inspect.signature(layout.rotary.forward).parameters)
        self.cache_arg = layout.cache_arg

    def run(self, hidden: torch.Tensor, positions: torch.Tensor, masks: Masks,
            cache: Any) -> torch.Tensor:
        if len(self.layers) == 0:
            return hidden
        tables = _rotary_tables(self.rotary_emb, self.rotary_by_kind, hidden, positions,
                                self.kinds)
        for layer, kind, window in zip(self.layers, self.kinds, self.windows, strict=True):
            extra = {"position_embeddings": tables[kind]} if tables else {}
            extra[self.cache_arg] = cache
            out = layer(hidden, attention_mask=masks[window], position_ids=positions,
                        use_cache=cache is not None, **extra)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


class GenericEdge(EdgePart):
    """Embeddings + blocks ``[0, split)``; overrides change :meth:`embed`."""

    def __init__(self, model: nn.Module, layout: Layout, split: int) -> None:
        super().__init__()
        self.embed_tokens = layout.embed
        self.blocks = _Blocks(layout, 0, split)
        self.embedding_multiplier = getattr(layout.decoder, "embedding_multiplier", None)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the first block's input (B, T, H)."""
        hidden = self.embed_tokens(input_ids)
        if self.embedding_multiplier is not None:  # Granite
            hidden = hidden * self.embedding_multiplier
        return hidden

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                masks: Masks, cache: Any) -> torch.Tensor:
        return self.blocks.run(self.embed(input_ids, positions), positions, masks, cache)


class GenericTail(TailPart):
    """Blocks ``[split, L)`` + final norm + LM head; overrides change :meth:`final_norm` or
    :meth:`head`."""

    def __init__(self, model: nn.Module, layout: Layout, split: int) -> None:
        super().__init__()
        self.blocks = _Blocks(layout, split, None)
        self.norm = layout.norm
        self.lm_head = layout.head
        config = model.config.get_text_config(decoder=True)
        self.softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
        self.logits_scaling = getattr(config, "logits_scaling", None)  # Granite
        scale = getattr(model, "logit_scale", None)  # Cohere
        self.logit_scale = scale if isinstance(scale, (int, float)) else None

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, H) -> the LM head's input (all positions, as the
        model's decoder ends)."""
        return self.norm(hidden) if self.norm is not None else hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's input (B, T, H') -> logits (B, T, V), as the model's head does."""
        logits = self.lm_head(hidden)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                masks: Masks, cache: Any,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.final_norm(self.blocks.run(hidden, positions, masks, cache))
        if keep is not None:  # after the norm, as the model slices (a projection may follow)
            hidden = hidden[:, keep]
        return self.head(hidden)


@register_fallback
class GenericFamily(Family):
    """Any decoder-only causal LM whose parts :func:`find_layout` finds."""

    name = "generic"
    model_types = ()
    #: decoder attributes an override's :meth:`GenericEdge.embed` / :meth:`GenericTail.final_norm`
    #: handle (their parameters are then known)
    extra_parts: ClassVar[tuple[str, ...]] = ()
    edge_class: ClassVar[type[GenericEdge]] = GenericEdge
    tail_class: ClassVar[type[GenericTail]] = GenericTail

    @classmethod
    def layout(cls, model: nn.Module) -> Layout:
        return find_layout(model, cls.extra_parts)

    @classmethod
    def check(cls, model: nn.Module) -> None:
        cls.layout(model)

    @classmethod
    def num_layers(cls, model: nn.Module) -> int:  # type: ignore[override]
        return len(cls.layout(model).layers)

    @staticmethod
    def hidden_size(model: nn.Module) -> int:
        return int(model.config.get_text_config(decoder=True).hidden_size)

    @staticmethod
    def kv_width(model: nn.Module) -> int:
        cfg = model.config.get_text_config(decoder=True)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return 2 * (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim

    @classmethod
    def windows(cls, model: nn.Module) -> list[int | None]:
        return list(cls.layout(model).windows)

    @classmethod
    def edge(cls, model: nn.Module, split: int) -> EdgePart:  # type: ignore[override]
        return cls.edge_class(model, cls.layout(model), split)

    @classmethod
    def tail(cls, model: nn.Module, split: int) -> TailPart:  # type: ignore[override]
        return cls.tail_class(model, cls.layout(model), split)
