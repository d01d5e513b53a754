"""Compact streams: the container header agreed once per deployment, 9 bytes per stream.

A learned bottleneck sends ~100-200 bytes per sample, so the ~20 bytes of a full container
header (codec, parameters, shape, lengths) are a large share. When both ends know what every
stream of a deployment looks like (one tensor of a fixed shape, one codec with fixed
parameters), that header is a *template*, registered on both ends once (the client when it
encodes, the server when it loads the deployment), and each stream names it by a 24-bit id.
Layout: ``docs/bitstream.md``, "Compact streams". The payload is the codec's, unchanged; the
CRC32 still covers every byte, and a stream naming an unknown template is a
:class:`~.errors.BitstreamError`. A decoder looks for a template in the
:func:`~.contexts.context_scope` first (under :func:`scope_key`), then among those registered
in the process: an LLM server keeps each session's templates apart, learned from the session's
own full streams (``docs/protocol.md``, "Compact steps"). Within such a session a stream may
name none (:func:`session_stream`, 5 bytes): its CRC picks the template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._crc import crc32
from .contexts import ContextRegistry, scope_items
from .errors import BitstreamError, DecodeLimits

if TYPE_CHECKING:
    from .base import Codec

#: magic of a compact stream (a full one starts with ``SC``)
COMPACT_MAGIC = b"SK"
#: bytes before the payload: magic and the template id (u24 LE)
PREFIX_BYTES = 5
#: the trailing CRC32 of every stream (as the container's)
CRC_BYTES = 4
#: templates this process keeps at first (least recently used forgotten first; the live bound:
#: ``TEMPLATES.max_items``)
MAX_TEMPLATES = 256

#: the templates this process holds, under 24-bit ids: the first 3 bytes of their SHA-256
TEMPLATES: ContextRegistry[bytes] = ContextRegistry(
    "compact stream template", bytes, id_bits=24, max_items=MAX_TEMPLATES, parse=bytes,
    to_bytes=bytes, scope_tag="template", key_format="06x",
    hint=" (both ends register a deployment's template)")

#: the 24-bit id (never 0) of a template
template_id = TEMPLATES.id_of
#: where a template sits in a :func:`~.contexts.context_scope` mapping
scope_key = TEMPLATES.scope_key
#: make a template known here; its id (ValueError if another template has it: make one of
#: them differ, e.g. by the shape)
register_template = TEMPLATES.register
#: the template registered under an id; BitstreamError if none is
find_template = TEMPLATES.require


def prefix(tid: int) -> bytes:
    return COMPACT_MAGIC + tid.to_bytes(3, "little")


# -- session streams -----------------------------------------------------------------------
#: magic of a session stream: a compact stream whose template is implied by the decoder's
#: session (``docs/bitstream.md``, "Session streams")
SESSION_MAGIC = b"s"
SESSION_PREFIX_BYTES = 1
#: CRC-32 of templates, by their bytes (bounded: cleared past :data:`MAX_TEMPLATES`)
_TEMPLATE_CRCS: dict[bytes, int] = {}


def _template_crc(tpl: bytes) -> int:
    crc = _TEMPLATE_CRCS.get(tpl)
    if crc is None:
        if len(_TEMPLATE_CRCS) >= MAX_TEMPLATES:
            _TEMPLATE_CRCS.clear()
        crc = _TEMPLATE_CRCS[tpl] = crc32(tpl)
    return crc


def session_stream(stream: bytes) -> bytes:
    """The session form of the compact stream ``stream`` (``SK``): 1 byte of magic instead of
    its 5 bytes of magic and template id; its CRC-32 runs over the template's bytes, then the
    stream's, so that the template is implied: a decoder takes the one of its session's
    templates (:func:`session_template`) under which the CRC holds, and a stream decoded in
    the wrong session fails its CRC (``BitstreamError``), never decodes under another header.
    For LLM steps: 4 bytes less a token (0.056 bit per element at 576 channels)."""
    if stream[:2] != COMPACT_MAGIC or len(stream) < PREFIX_BYTES + CRC_BYTES:
        raise ValueError("not a compact stream (SK)")
    tpl = find_template(int.from_bytes(stream[2:PREFIX_BYTES], "little"))
    body = SESSION_MAGIC + stream[PREFIX_BYTES:-CRC_BYTES]
    return body + crc32(body, _template_crc(bytes(tpl))).to_bytes(CRC_BYTES, "little")


def session_template(view: memoryview, body_end: int, crc: int) -> bytes:
    """The template of the session stream ``view`` (its body ending at ``body_end``, its
    CRC ``crc``): the first of the templates in the :func:`~.contexts.context_scope` (a
    session holds a few: the server keeps at most 16) under which the CRC holds; templates
    registered in the process are not tried. ``BitstreamError`` if none does."""
    for key, tpl in scope_items():
        if (isinstance(key, tuple) and key[0] == TEMPLATES.scope_tag and isinstance(tpl, bytes)
                and crc32(view[:body_end], _template_crc(tpl)) == crc):
            return tpl
    raise BitstreamError("session stream: CRC mismatch under every template of this session "
                         "(corrupted, or sent in another session)")


# -- parsed templates ----------------------------------------------------------------------
#: what the container parsed of a one-tensor header before, by (its bytes, the limits it was
#: checked against): a template, or a full stream's header up to its payload length (the same
#: bytes). Parsing reads those bytes alone, so a stream starting with them parses the same way;
#: the container keeps here only what a reusable decoder parsed (:meth:`.base.Codec.reusable_for`)
PARSED: dict[tuple[bytes, DecodeLimits], tuple] = {}
#: the lengths of the :data:`PARSED` byte strings, most recent last (a full stream is looked up
#: by each: its header's length is not known before it is parsed)
PARSED_SIZES: list[int] = []
#: bounds of :data:`PARSED` and :data:`PARSED_SIZES`: past either, both are cleared (a peer
#: cycling through headers costs a parse per stream, as without them, and no memory)
MAX_PARSED, MAX_PARSED_SIZES = 256, 4


def remember_parsed(head: bytes, limits: DecodeLimits, codec: Codec, header: Any) -> None:
    """Keep what parsing the one-tensor header bytes ``head`` under ``limits`` gave (the
    decoder and its :class:`~.container.Header`, see :data:`PARSED`) when nothing else made
    it: a reusable decoder (:meth:`.base.Codec.reusable_for`), limits of the plain type."""
    if type(limits) is not DecodeLimits or not type(codec).reusable_for(codec.params):
        return
    size = len(head)
    if len(PARSED) >= MAX_PARSED or (size not in PARSED_SIZES
                                     and len(PARSED_SIZES) >= MAX_PARSED_SIZES):
        PARSED.clear()
        PARSED_SIZES.clear()
    if size not in PARSED_SIZES:
        PARSED_SIZES.append(size)
    PARSED[head, limits] = (codec, header, {})  # the last: its headers, by their sizes


def parsed_header(head: bytes, limits: DecodeLimits, header_bytes: int, total: int):
    """``(header, decoder)`` of a stream of ``total`` bytes, its payload after
    ``header_bytes``, whose one-tensor header ``head`` is in :data:`PARSED` under ``limits``
    (the header kept per sizes: few differ); None if it is not there."""
    parsed = PARSED.get((head, limits)) if type(limits) is DecodeLimits else None
    if parsed is None:
        return None
    codec, first, headers = parsed
    header = headers.get((header_bytes, total))
    if header is None:  # the parsed header's classes (container's Header and TensorInfo)
        info = first.tensors[0]
        size = total - header_bytes - CRC_BYTES
        header = type(first)(codec_id=first.codec_id, codec_name=first.codec_name,
                             params=first.params, header_bytes=header_bytes, total_bytes=total,
                             tensors=(type(info)(code=info.code, shape=info.shape,
                                                 payload_bytes=size),))
        if len(headers) < 64:
            headers[header_bytes, total] = header
    return header, codec


def parsed_stream(view: memoryview, body_end: int, limits: DecodeLimits):
    """``(header, decoder, payload offset)`` of a full one-tensor stream (``view``, its body
    ending at ``body_end``) whose header up to its payload length is in :data:`PARSED` under
    ``limits``, when that length (a varint of up to 4 bytes, read as the parser reads it) is
    what the body holds; else None (the stream is then parsed as usual)."""
    if type(limits) is not DecodeLimits:
        return None
    for p in PARSED_SIZES:
        head = bytes(view[:p]) if p < body_end else b""
        if (head, limits) not in PARSED:
            continue
        size = shift = 0
        pos = p
        while pos < body_end and shift <= 21:
            byte = view[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            if byte < 0x80:
                hit = parsed_header(head, limits, pos, len(view)) if size == body_end - pos \
                    else None
                return None if hit is None else (*hit, pos)
            shift += 7
        return None
    return None
