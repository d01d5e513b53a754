"""The container's memo of the last full (``SC``) one-tensor header it parsed for a reusable
decoder: a client's streams (one codec, one shape) then skip the parse and the lookups of
:func:`.compact.parsed_stream` (~1 us of a ~80 us slicer decode). A stream matches when it
starts with the same bytes up to its payload length, under the same limits object, so it
parses the same way (:data:`.compact.PARSED`'s rule)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import DecodeLimits

#: (limits, header bytes up to the payload length, decoder, its Header, Headers by
#: (payload offset, stream size)), or None
_LAST: tuple | None = None
#: bound of the Headers kept per remembered header (cleared when full)
MAX_HEADERS = 256


def remember(head: bytes, limits: DecodeLimits, codec: Any, header: Any) -> None:
    """Keep a one-tensor parse (the caller checks the decoder is reusable)."""
    global _LAST
    if type(limits) is DecodeLimits:
        _LAST = (limits, head, codec, header, {})


def lookup(view: memoryview, body_end: int, limits: DecodeLimits) -> tuple | None:
    """``(header, decoder, payload offset)`` of the full stream ``view`` (body ending at
    ``body_end``) if it starts with the remembered bytes and its payload length (a varint of
    up to 4 bytes, as :func:`.compact.parsed_stream` reads it) spans the rest; else None."""
    last = _LAST
    if last is None or last[0] is not limits:
        return None
    _, head, codec, first, headers = last
    pos = len(head)
    if pos >= body_end or view[:pos] != head:
        return None
    size = shift = 0
    while pos < body_end and shift <= 21:
        byte = view[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            if size != body_end - pos:
                return None
            key = (pos, len(view))
            header = headers.get(key)
            if header is None:
                info = replace(first.tensors[0], payload_bytes=size)
                header = replace(first, tensors=(info,), header_bytes=pos,
                                 total_bytes=key[1])
                if len(headers) >= MAX_HEADERS:
                    headers.clear()
                headers[key] = header
            return header, codec, pos
        shift += 7
    return None
