"""The hidden state on the wire: codec ``encode`` on the edge, ``decode`` on the server.

Pure functions plus a byte counter; nothing here knows about sockets. A message carries the
hidden states of one step (the whole prompt at prefill, one token per decode step). With
``per_token=True`` (the default) every token is its own self-describing bitstream, shape
(1, 1, H): what a decode step sends, so prefill and teacher-forced evaluation are coded
exactly as generation codes them. ``per_token=False`` sends one bitstream per message.

Compact per-token streams (``compact=True``): a token's ~21-byte container header (codec,
parameters, shape, CRC) becomes 5 bytes once the receiver knows it. The first stream of each
template (codec, parameters, shape (1, 1, H)) in a session is full, and the server learns its
template from it (``docs/protocol.md``, "Compact steps"); later ones are *session streams*
(:func:`~splitcomp.codecs.compact.session_stream`: a byte of magic and the CRC, which also
picks the template among the session's). At ~190 bytes a token that is 0.22 bit per element
of SmolLM2-135M's 576 channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import codecs
from ..codecs import DEFAULT_LIMITS, Codec, DecodeLimits, Header
from ..codecs.compact import (
    COMPACT_MAGIC,
    CRC_BYTES,
    SESSION_MAGIC,
    SESSION_PREFIX_BYTES,
    session_stream,
    template_id,
)
from ..codecs.container import learn_template, template
from ..codecs.contexts import PREVIOUS_ROW


def encode_hidden(codec: Codec, hidden: torch.Tensor, per_token: bool = True,
                  known: set[int] | None = None, state: dict | None = None) -> list[bytes]:
    """Bitstreams for the hidden states (1, T, H) of one step: T of them, or one.

    ``known`` (per-token only): the compact templates the receiver holds; a token whose
    template is among them is sent compact, else full, and its template joins ``known``
    (the receiver learns it from that stream). ``state``: what the receiver's session
    holds besides templates, here its previous decoded row
    (:data:`~splitcomp.codecs.contexts.PREVIOUS_ROW`), updated as the receiver will update
    it; a codec that codes against it (:attr:`~splitcomp.codecs.Codec.uses_previous_row`)
    decodes each of its own streams for that (a new state each call when None)."""
    if hidden.dim() != 3 or hidden.shape[0] != 1:
        raise ValueError(f"expected hidden states of shape (1, T, H), got {tuple(hidden.shape)}")
    if known is not None and not per_token:
        raise ValueError("compact streams are per token")
    state = {} if state is None else state
    if not per_token:
        return [_encode(codec, hidden, False, state)]
    if known is None:
        return [_encode(codec, hidden[:, t : t + 1], False, state)
                for t in range(hidden.shape[1])]
    tid = template_id(template(codec, (1, 1, hidden.shape[2]), hidden.dtype))
    out = []
    for t in range(hidden.shape[1]):
        if tid in known:  # a resilient codec's compact streams (SQ) stay as they are
            blob = _encode(codec, hidden[:, t : t + 1], True, state)
            out.append(session_stream(blob) if blob[:2] == COMPACT_MAGIC else blob)
        else:
            out.append(_encode(codec, hidden[:, t : t + 1], False, state))
            known.add(tid)
    return out


def _encode(codec: Codec, x: torch.Tensor, compact: bool, state: dict) -> bytes:
    """One stream, coded against ``state``'s previous row when the codec uses it (then
    decoded here, as the receiver will, for the next one)."""
    if not codec.uses_previous_row:
        return codec.encode(x, compact=compact)
    prev = state.get(PREVIOUS_ROW)
    scope = {} if prev is None else {PREVIOUS_ROW: prev}
    with codecs.context_scope(scope):
        blob = codec.encode(x, compact=compact)
    decode_in_session(blob, scope)
    state[PREVIOUS_ROW] = scope[PREVIOUS_ROW]
    return blob


def decode_in_session(blob: bytes | memoryview, session: dict,
                      limits: DecodeLimits = DEFAULT_LIMITS,
                      check: Callable[[Header], object] | None = None) -> torch.Tensor:
    """One stream (1, T, H) of a session, decoded in its scope (``session``: templates,
    contexts, the previous row), whose last row (float32) then becomes the session's
    previous row (``PREVIOUS_ROW``): what every receiver of a session's streams, in order,
    does (:func:`decode_hidden`, the edge for its own streams, the LLM server)."""
    (t,) = codecs.decode(blob, limits, check=check, contexts=session)
    session[PREVIOUS_ROW] = t[0, -1].float().numpy().copy()
    return t


def decode_hidden(blobs: list[bytes] | tuple[bytes, ...], session: dict | None = None
                  ) -> torch.Tensor:
    """Inverse of :func:`encode_hidden`: (1, T, H) float32. The bitstreams say their codec;
    ``session`` (a :func:`~splitcomp.codecs.context_scope` mapping, kept across calls) learns
    the templates of full streams, as a server session does, and session streams find theirs
    there (a new one for each call when None)."""
    session = {} if session is None else session
    parts = []
    for blob in blobs:
        learn_template(session, blob)
        t = decode_in_session(blob, session)
        if t.dim() != 3 or t.shape[0] != 1:
            raise ValueError(f"hidden-state bitstream of shape {tuple(t.shape)}, not (1, T, H)")
        parts.append(t.float())
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def overhead_bytes(blob: bytes) -> int:
    """Container bytes of a bitstream that are not codec payload (header + CRC)."""
    if blob[:1] == SESSION_MAGIC:  # the header is the session's: not in the stream
        return SESSION_PREFIX_BYTES + CRC_BYTES
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
    """A codec plus a byte counter: what the edge hands to a transport and the server reads.

    ``compact`` (per token only): streams whose template the server session holds are
    compact. The templates a :meth:`send` taught count as held once the caller
    :meth:`confirm` s the step was answered; :meth:`forget` when a new server session starts
    without the old one's streams."""

    def __init__(self, codec: Codec, per_token: bool = True, compact: bool = False) -> None:
        if compact and not per_token:
            raise ValueError("compact streams are per token (per_token=True)")
        self.codec = codec
        self.per_token = per_token
        self.stats = WireStats()
        self._known: set[int] | None = set() if compact else None
        self._pending: set[int] = set()
        self._state: dict = {}  # what the server session holds besides templates
        self._pending_state: dict = {}
        #: the templates a receiver's session learned (:meth:`receive`): a
        #: :func:`~splitcomp.codecs.context_scope` mapping for its streams
        self.session: dict = {}

    @property
    def compact(self) -> bool:
        return self._known is not None

    def send(self, hidden: torch.Tensor) -> list[bytes]:
        known = None if self._known is None else set(self._known)
        self._pending_state = dict(self._state)
        blobs = encode_hidden(self.codec, hidden, self.per_token, known, self._pending_state)
        if known is not None and self._known is not None:
            self._pending = known - self._known
        self.stats.add(blobs, tokens=hidden.shape[1], elements=hidden.numel())
        return blobs

    def confirm(self) -> None:
        """The last :meth:`send` s streams reached the server session: their templates too."""
        if self._known is not None:
            self._known |= self._pending
        self._pending = set()
        self._state = self._pending_state

    def forget(self) -> None:
        """A new server session: it holds no template yet."""
        if self._known is not None:
            self._known.clear()
        self._pending = set()
        self._state, self._pending_state = {}, {}
        self.session = {}

    def receive(self, blobs: list[bytes] | tuple[bytes, ...]) -> torch.Tensor:
        """What a server session decodes of :meth:`send` s streams, in order (in process)."""
        return decode_hidden(blobs, self.session)
