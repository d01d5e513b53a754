"""Small models for the partition tests, and checks shared by them."""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Residual block; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """stem (3->8) -> layer1 (8, 16x16) -> layer2 (16, 8x8) -> pool -> fc; input 3x16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class SkipNet(nn.Module):
    """The stem's output skips over three layers; the raw input is used again at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.l1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.l2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.l3 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(4, 2, 1)
        self.from_input = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        c = self.l3(self.l2(self.l1(s)))
        return self.out(c + s) + self.from_input(x)


class ShapeNet(nn.Module):
    """Awkward graph: a size read off the input at the top and used at the end, a module
    returning a tuple, an in-place activation, a buffer-only (static) computation."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.size(0)
        y, (h, _) = self.lstm(x)
        y = self.act(y) * self.scale.exp()
        z = y.reshape(b, -1).view(b, -1, 8)
        return {"out": self.fc(z).sum(1), "h": h}


class FixedBatch(nn.Module):
    """Concatenates a (1, 2) parameter to each row: only batch 1 works, so export is static."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.extra = nn.Parameter(torch.randn(1, 2))
        self.b = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cat([self.a(x), self.extra], 1))


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """An eval-mode instance with fixed random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=256, n_embd=64, n_layer=4, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def leaves(out: Any) -> list[torch.Tensor]:
    """Tensors of a model output (a tensor, a tuple, or a Hugging Face ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in out if isinstance(t, torch.Tensor)]


def assert_exact(model: nn.Module, head: nn.Module, tail: nn.Module, *args: Any,
                 **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """``tail(*head(x))`` equals ``model(x)`` bit for bit; returns the crossing tensors."""
    with torch.no_grad():
        crossing = head(*args, **kwargs)
        got = tail(*crossing)
        want = model(*args, **kwargs)
    assert isinstance(crossing, tuple)
    got_leaves, want_leaves = leaves(got), leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)
    return crossing


def assert_weights_partitioned(model: nn.Module, head: nn.Module, tail: nn.Module,
                               shared: int = 0) -> None:
    """Each weight lives in the half that uses it (the model's own tensors, by reference);
    only ``shared`` of them (tied weights) sit in both; none is passed across."""
    own = {id(p): p for p in model.parameters()}
    hp = {id(p): p for p in head.parameters()}
    tp = {id(p): p for p in tail.parameters()}
    assert set(hp) <= set(own) and set(tp) <= set(own)
    assert len(set(hp) & set(tp)) == shared
    assert set(hp) | set(tp) == set(own)
    total = sum(p.numel() for p in own.values())
    both = sum(hp[i].numel() for i in set(hp) & set(tp))
    assert sum(p.numel() for p in hp.values()) + sum(p.numel() for p in tp.values()) == (
        total + both)


def reload(module: nn.Module) -> nn.Module:
    """``module`` after a ``torch.save`` / ``torch.load`` round trip."""
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def assert_no_weight_crosses(model: nn.Module, crossing: tuple[torch.Tensor, ...]) -> None:
    ptrs = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    assert all(t.data_ptr() not in ptrs for t in crossing)
