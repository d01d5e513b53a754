"""What a module costs to run: FLOPs, counted by torch's ``FlopCounterMode``.

One unit everywhere in splitcomp: **FLOPs, a multiply-add counts 2**, per sample on the example
input. Counted are convolutions, the matmul family (linear layers, ``bmm``) and attention;
elementwise ops, norms and activations count 0 (torch's convention). Three kernels the stock
counter does not know are counted here, so attention is not silently 0:

* ``_native_multi_head_attention`` and ``_transformer_encoder_layer_fwd``: the fused "fast
  path" ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take in eval mode without
  gradients (projections, both attention matmuls, feed-forward);
* ``_scaled_dot_product_flash_attention_for_cpu``: scaled-dot-product attention on the CPU,
  counted with torch's own SDPA formula.

Nothing is switched off to count: the model runs the kernels it always runs, so the graph a
cut is measured on reproduces the model bit for bit.

``measure`` (the per-node cut table) and :func:`count_flops` (any module: trained encoders,
exit heads) both use :func:`flop_counter`, so ``candidates``, ``plan``, ``report`` and
training checkpoints agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter as _fc

#: the unit every FLOPs figure in splitcomp is in (said in outputs next to the figures)
FLOPS_NOTE = ("FLOPs per sample, a multiply-add counts 2 (torch.utils.flop_counter: "
              "convolutions, matmuls, attention; elementwise ops count 0)")


def _sdpa_cpu(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
              out_shape: Any = None, **kwargs: Any) -> int:
    return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention(batch: int, q_len: int, kv_len: int, dim: int) -> int:
    """Both attention matmuls over all heads (q k^T, then the weights times v)."""
    return 2 * 2 * batch * q_len * kv_len * dim


def _native_mha(query_shape: Any, key_shape: Any, value_shape: Any, embed_dim: int,
                *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    *lead, q_len, dim = query_shape
    kv_len = key_shape[-2]
    batch = lead[0] if lead else 1
    projections = 2 * batch * (q_len * dim * dim + 2 * kv_len * dim * dim + q_len * dim * dim)
    return projections + _attention(batch, q_len, kv_len, dim)


def _encoder_layer(src_shape: Any, embed_dim: int, num_heads: int, *args: Any,
                   out_shape: Any = None, **kwargs: Any) -> int:
    *lead, length, dim = src_shape
    batch = lead[0] if lead else 1
    ffn = kwargs.get("ffn_weight_1", args[11] if len(args) > 11 else None)
    hidden = ffn[0] if ffn is not None else 0
    tokens = batch * length
    return (2 * tokens * (4 * dim * dim + 2 * dim * hidden)
            + _attention(batch, length, length, dim))


def _extra_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu),
                          ("_native_multi_head_attention", _native_mha),
                          ("_transformer_encoder_layer_fwd", _encoder_layer)):
        op = getattr(aten, name, None)
        if op is not None:
            extra[op] = formula
    return extra


def flop_counter() -> _fc.FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that also counts the attention kernels above; use
    it as a context manager and read ``get_total_flops()``."""
    return _fc.FlopCounterMode(display=False, custom_mapping=_extra_formulas())


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """FLOPs (a multiply-add is 2) of one ``module(*inputs, **kwargs)`` call; give it one
    sample to get a per-sample figure."""
    with flop_counter() as counter:
        module(*inputs, **kwargs)
    return int(counter.get_total_flops())


def mflops(flops: int | float) -> float:
    """FLOPs as MFLOPs (the figure reports print)."""
    return float(flops) / 1e6
