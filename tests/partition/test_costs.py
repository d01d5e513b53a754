"""FLOPs come from one counter (torch's ``FlopCounterMode``, a multiply-add is 2) and include
attention: a ResNet-20 matches its hand count, a transformer encoder layer its analytic count,
and the cut table sums to the same whole-model figure."""

from __future__ import annotations

import torch
from torch import nn

from splitcomp.partition import candidates
from splitcomp.partition.costs import count_flops, flop_counter
from splitcomp.zoo import create_model


def _resnet20_hand_flops() -> int:
    """Conv and linear multiply-adds of the CIFAR ResNet-20 (option-A shortcuts, no conv
    there), times 2."""
    macs = 32 * 32 * 16 * 3 * 9                       # stem
    macs += 6 * 32 * 32 * 16 * 16 * 9                 # layer1: 3 blocks x 2 convs
    macs += 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9   # layer2
    macs += 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9       # layer3
    macs += 64 * 10                                   # classifier
    return 2 * macs


def test_resnet20_flops_equal_the_hand_count() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    hand = _resnet20_hand_flops()
    assert hand == 81_102_080
    assert count_flops(model, x) == hand
    cands = candidates(model, (x,))
    assert cands[0].total_flops == hand     # the cut table uses the same counter


def _encoder_layer_flops(d: int, ff: int, seq: int) -> tuple[int, int]:
    """(projections and feed-forward, attention matmuls) of one encoder layer, batch 1."""
    linear = 2 * seq * (3 * d * d + d * d + 2 * d * ff)
    attention = 2 * 2 * seq * seq * d          # q k^T and the weights times v, over all heads
    return linear, attention


def test_encoder_layer_counts_attention_matmuls() -> None:
    torch.manual_seed(0)
    d, heads, ff, seq = 16, 2, 32, 5
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, batch_first=True).eval()
    x = torch.randn(1, seq, d)
    linear, attention = _encoder_layer_flops(d, ff, seq)
    assert attention > 0
    assert count_flops(layer, x) == linear + attention        # the fused fast path
    with torch.enable_grad(), flop_counter() as counter:      # the unfused path
        layer(x)
    assert counter.get_total_flops() == linear + attention


def test_multihead_attention_alone_and_in_the_cut_table() -> None:
    torch.manual_seed(0)
    d, seq = 16, 7

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
            self.out = nn.Linear(d, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.out(y)

    net = Net().eval()
    x = torch.randn(1, seq, d)
    attn = 2 * seq * 4 * d * d + 2 * 2 * seq * seq * d
    assert count_flops(net.attn, x, x, x) == attn
    total = attn + 2 * seq * d * 3
    assert count_flops(net, x) == total
    cut = {c.name: c for c in candidates(net, (x,))}["attn"]
    assert cut.head_flops == attn and cut.total_flops == total


def test_sdpa_is_counted() -> None:
    q = torch.randn(1, 2, 6, 8)
    k = torch.randn(1, 2, 9, 8)
    v = torch.randn(1, 2, 9, 4)

    class Attend(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, k, v)

    assert count_flops(Attend(), q, k, v) == 2 * 2 * (6 * 9 * 8) + 2 * 2 * (6 * 9 * 4)
