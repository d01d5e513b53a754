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
own full streams (``docs/protocol.md``, "Compact steps").
"""

from __future__ import annotations

from .contexts import ContextRegistry

#: magic of a compact stream (a full one starts with ``SC``)
COMPACT_MAGIC = b"SK"
#: bytes before the payload: magic and the template id (u24 LE)
PREFIX_BYTES = 5
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
