"""A learned bottleneck at a cut: an encoder on the edge, a factorized entropy model, a decoder
on the server that feeds the unchanged tail.

    crossing tensor (B, K, H, W) --encoder--> latent y (B, C, H/s, W/s)
        --quantize + entropy code (the ``bottleneck`` codec)--> bytes
        --decode--> y_hat --decoder--> (B, K, H, W) --tail--> logits

The encoder may start from a copy of the head's last blocks (Entropic Student's way: those
blocks are fine-tuned on the edge while the server's tail stays frozen). Several tails can
share one bitstream: extra decoders, one per extra tail, read the same latent
(``tails.py``). :class:`EdgeModel` and :class:`ServerModel` are what a deployment runs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .entropy_model import EntropyBottleneck


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


def _decoder(channels: int, hidden: int, out: int, stride: int) -> nn.Sequential:
    """Latent (C channels) -> a crossing tensor of ``out`` channels (upsampled by ``stride``)."""
    up = nn.ConvTranspose2d(channels, hidden, 4, 2, 1) if stride == 2 else _conv(channels, hidden)
    return nn.Sequential(
        up, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        _conv(hidden, hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        _conv(hidden, out), nn.ReLU())


class Bottleneck(nn.Module):
    """Encoder, entropy model and decoder around a crossing tensor of ``in_channels``.

    ``channels``: latent channels C; ``stride``: spatial reduction (1 or 2); ``hidden``: the
    width of the convolutions (default ``in_channels``). ``tails``: extra tails served from
    the same latent, name -> the channels of their crossing tensor; each gets a decoder of
    the same architecture in :attr:`tails`.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 2,
                 hidden: int | None = None, tails: dict[str, int] | None = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        hidden = hidden or in_channels
        self.in_channels, self.channels, self.stride, self.hidden = (
            in_channels, channels, stride, hidden)
        self.tail_channels = dict(tails or {})
        self.encoder = nn.Sequential(
            _conv(in_channels, hidden, stride), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            _conv(hidden, channels))
        self.entropy = EntropyBottleneck(channels)
        self.decoder = _decoder(channels, hidden, in_channels, stride)
        self.tails = nn.ModuleDict({name: _decoder(channels, hidden, out, stride)
                                    for name, out in self.tail_channels.items()})

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "channels": self.channels,
                "stride": self.stride, "hidden": self.hidden, "tails": self.tail_channels}

    def decoder_for(self, name: str | None = None) -> nn.Module:
        """The decoder of the tail ``name`` (None: the primary model's)."""
        return self.decoder if name is None else self.tails[name]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructed features for the primary tail, likelihoods of the latent)."""
        y_hat, likelihoods = self.entropy(self.encoder(features))
        return self.decoder(y_hat), likelihoods


class EdgeModel(nn.Module):
    """What the edge runs: the head, then the encoder: input -> latent y (float; the codec
    quantizes it)."""

    def __init__(self, head: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.head, self.encoder = head, encoder

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        (features,) = self.head(*inputs)
        return self.encoder(features)


class ServerModel(nn.Module):
    """What the server runs for one tail (any of a bottleneck's, each with its own decoder):
    decoder, then the tail: y_hat -> outputs."""

    def __init__(self, decoder: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.decoder, self.tail = decoder, tail

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.tail(self.decoder(y_hat))


def _blocks(module: nn.Module) -> list[str]:
    """The parameterised blocks of ``module`` in order: a module two levels below the model
    (``layer2.2``) or one (``conv1``)."""
    blocks: list[str] = []
    for name, _ in module.named_parameters():
        parts = name.split(".")
        block = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        if block not in blocks:
            blocks.append(block)
    return blocks


def _trainable_copy(module: nn.Module, tuned: list[str]) -> nn.Module:
    module = copy.deepcopy(module)
    for name, p in module.named_parameters():
        p.requires_grad_(any(name == b or name.startswith(b + ".") for b in tuned))
    return module


def trainable_head(head: nn.Module, tune_last: int) -> tuple[nn.Module, list[str]]:
    """A copy of ``head`` whose last ``tune_last`` parameterised blocks train (the rest
    frozen); returns (copy, names of the blocks that train)."""
    blocks = _blocks(head)
    tuned = blocks[len(blocks) - tune_last:] if tune_last > 0 else []
    return _trainable_copy(head, tuned), tuned


def trainable_tail(tail: nn.Module, tune_first: int) -> tuple[nn.Module, list[str]]:
    """A copy of ``tail`` whose first ``tune_first`` parameterised blocks train (all of
    them when it has fewer); returns (copy, names of the blocks that train). The copy is
    the server's: the original tail stays the teacher."""
    tuned = _blocks(tail)[:max(tune_first, 0)]
    return _trainable_copy(tail, tuned), tuned


def freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def parameters(*modules: nn.Module) -> Sequence[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]
