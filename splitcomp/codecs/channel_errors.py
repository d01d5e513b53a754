"""A link that delivers bytes with bit errors: each bit flipped independently (a binary
symmetric channel at a bit error rate), seeded, nothing lost or reordered.

What a raw radio link (no link-layer retransmission) hands the receiver. The planner's channel
model uses it (``splitcomp.plan.channel.Channel.corrupt``); :func:`transmit` sends one
stream through it and decodes what arrives as a server would, concealing what a resilient
stream allows (:mod:`.resilient`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import Codec
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits
from .resilient import decode_resilient


def flip_bits(data: bytes | bytearray | memoryview, ber: float,
              rng: np.random.Generator) -> bytes:
    """``data`` as it arrives over a link flipping each bit with probability ``ber``: the
    number of flips is drawn (binomial), then that many distinct bit positions, uniformly."""
    if not 0.0 <= ber <= 1.0:
        raise ValueError(f"bit error rate must be in [0, 1], got {ber}")
    raw = bytes(data)
    bits = 8 * len(raw)
    k = int(rng.binomial(bits, ber)) if bits and ber > 0 else 0
    if k == 0:
        return raw
    where = rng.choice(bits, size=k, replace=False)
    arr = np.frombuffer(raw, np.uint8).copy()
    np.bitwise_xor.at(arr, where >> 3, np.left_shift(1, where & 7).astype(np.uint8))
    return arr.tobytes()


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s transmission: every row of an evaluation sees
    errors drawn independently of the others', reproducibly."""
    return np.random.default_rng([seed, index])


@dataclass
class Delivery:
    """One stream sent over a noisy link: what was sent, what arrived, what decoding made of
    it (``tensors`` None: the decoder rejected the stream, the request is lost)."""

    sent: bytes
    received: bytes
    tensors: tuple[torch.Tensor, ...] | None
    concealed: int = 0  #: slices concealed

    @property
    def lost(self) -> bool:
        return self.tensors is None

    @property
    def flipped(self) -> bool:
        return self.sent != self.received


def transmit(codec: Codec, tensors: torch.Tensor | Sequence[torch.Tensor], ber: float,
             rng: np.random.Generator, *, compact: bool = False,
             contexts: Mapping[int, object] | None = None,
             limits: DecodeLimits = DEFAULT_LIMITS) -> Delivery:
    """Encode ``tensors`` with ``codec``, flip bits at ``ber``, decode as a server would (a
    resilient stream's failed slices concealed; anything rejected is a lost request)."""
    sent = codec.encode(tensors, compact=compact)
    received = flip_bits(sent, ber, rng)
    try:
        out, concealed = decode_resilient(received, limits, contexts)
    except BitstreamError:
        return Delivery(sent, received, None)
    return Delivery(sent, received, out, concealed)
