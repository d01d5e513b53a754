"""The hidden state on the wire: codec ``encode`` on the edge, ``decode`` on the server.

Pure functions plus a byte counter; nothing here knows about sockets. A message carries the
hidden states of one step (the whole prompt at prefill, one token per decode step). With
``per_token=True`` (the default) every token is its own self-describing bitstream, shape
(1, 1, H): what a decode step sends, so prefill and teacher-forced evaluation are coded
exactly as generation codes them. ``per_token=False`` sends one bitstream per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import codecs
from ..codecs import Codec


def encode_hidden(codec: Codec, hidden: torch.Tensor, per_token: bool = True) -> list[bytes]:
    """Bitstreams for the hidden states (1, T, H) of one step: T of them, or one."""
    if hidden.dim() != 3 or hidden.shape[0] != 1:
        raise ValueError(f"expected hidden states of shape (1, T, H), got {tuple(hidden.shape)}")
    if not per_token:
        return [codec.encode(hidden)]
    return [codec.encode(hidden[:, t : t + 1]) for t in range(hidden.shape[1])]


def decode_hidden(blobs: list[bytes] | tuple[bytes, ...]) -> torch.Tensor:
    """Inverse of :func:`encode_hidden`: (1, T, H) float32. The bitstreams say their codec."""
    parts = []
    for blob in blobs:
        (t,) = codecs.decode(blob)
        if t.dim() != 3 or t.shape[0] != 1:
            raise ValueError(f"hidden-state bitstream of shape {tuple(t.shape)}, not (1, T, H)")
        parts.append(t.float())
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def overhead_bytes(blob: bytes) -> int:
    """Container bytes of a bitstream that are not codec payload (header + CRC)."""
    head = codecs.peek(blob)
    return head.total_bytes - sum(t.payload_bytes for t in head.tensors)


@dataclass
class WireStats:
    """Every byte that crossed, and what it carried."""

    messages: int = 0
    bitstreams: int = 0
    tokens: int = 0
    elements: int = 0
    bytes: int = 0
    overhead: int = 0
    per_message: list[int] = field(default_factory=list)

    def add(self, blobs: list[bytes], tokens: int, elements: int) -> None:
        size = sum(len(b) for b in blobs)
        self.messages += 1
        self.bitstreams += len(blobs)
        self.tokens += tokens
        self.elements += elements
        self.bytes += size
        self.overhead += sum(overhead_bytes(b) for b in blobs)
        self.per_message.append(size)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    @property
    def bits_per_element(self) -> float:
        """Including container headers and CRCs."""
        return 8 * self.bytes / self.elements if self.elements else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"messages": self.messages, "bitstreams": self.bitstreams, "tokens": self.tokens,
                "bytes": self.bytes, "overhead_bytes": self.overhead,
                "bytes_per_token": self.bytes_per_token,
                "bits_per_element": self.bits_per_element}


class Wire:
    """A codec plus a byte counter: what the edge hands to a transport and the server reads."""

    def __init__(self, codec: Codec, per_token: bool = True) -> None:
        self.codec = codec
        self.per_token = per_token
        self.stats = WireStats()

    def send(self, hidden: torch.Tensor) -> list[bytes]:
        blobs = encode_hidden(self.codec, hidden, self.per_token)
        self.stats.add(blobs, tokens=hidden.shape[1], elements=hidden.numel())
        return blobs

    @staticmethod
    def receive(blobs: list[bytes] | tuple[bytes, ...]) -> torch.Tensor:
        return decode_hidden(blobs)
