"""Compact streams: the container header agreed once per deployment, 9 bytes per stream.

A learned bottleneck sends ~100-200 bytes per sample, so the ~20 bytes of a full container
header (codec, parameters, shape, lengths) are a large share. When both ends know what every
stream of a deployment looks like (one tensor of a fixed shape, one codec with fixed
parameters), that header is a *template*, registered on both ends once (the client when it
encodes, the server when it loads the deployment), and each stream names it by a 24-bit id.
Layout: ``docs/bitstream.md``, "Compact streams". The payload is the codec's, unchanged; the
CRC32 still covers every byte, and a stream naming an unknown template is a
:class:`~.errors.BitstreamError`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .errors import require

#: magic of a compact stream (a full one starts with ``SC``)
COMPACT_MAGIC = b"SK"
#: bytes before the payload: magic and the template id (u24 LE)
PREFIX_BYTES = 5
#: templates this process keeps (least recently used forgotten first)
MAX_TEMPLATES = 256

_STORE: OrderedDict[int, bytes] = OrderedDict()
_LOCK = threading.Lock()


def template_id(template: bytes) -> int:
    """The 24-bit id of a template (never 0): the first 3 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(template).digest()[:3], "little") or 1


def register_template(template: bytes) -> int:
    """Make a template known to this process; returns its id (ValueError if another
    template has that id: make one of them differ, e.g. by the shape)."""
    tid = template_id(template)
    with _LOCK:
        old = _STORE.get(tid)
        if old is not None and old != template:
            raise ValueError(f"compact stream template {tid:06x} already holds another")
        _STORE[tid] = template
        _STORE.move_to_end(tid)
        while len(_STORE) > MAX_TEMPLATES:
            _STORE.popitem(last=False)
    return tid


def find_template(tid: int) -> bytes:
    """The template registered under ``tid``; BitstreamError if none is."""
    with _LOCK:
        hit = _STORE.get(tid)
        if hit is not None:
            _STORE.move_to_end(tid)
    require(hit is not None, f"compact stream names template {tid:06x}, which is not "
            "registered here (both ends register a deployment's template)")
    return hit  # type: ignore[return-value]


def prefix(tid: int) -> bytes:
    return COMPACT_MAGIC + tid.to_bytes(3, "little")
