"""Codec session contexts on both ends of an LLM session.

A codec with a session context (``Codec.has_session_context``; today ``tokenwise``: its
calibration) codes every stream against static side information the decoder must hold. That
context (``docs/protocol.md``, "Codec contexts") travels in the OPEN request: the client first
names it by its SHA-256 only; a server that lacks it answers ``CONTEXT_UNKNOWN`` and the client
opens again with the bytes (~47 KB for SmolLM2, once per server, not per session).

:class:`ContextStore` is a deployment's side: it validates and keeps uploaded contexts in a
bounded LRU, finds the operator's (registered in this process, e.g. by
``splitcomp serve --codec-context FILE``), and gives each session the contexts it opened with;
the session's steps are decoded with those (``codecs.decode(..., contexts=...)``), never with
another client's context under the same key. Everything goes through the ``Codec`` context
hooks, so the store knows no codec by name. Used from the server's event loop thread only.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

from ...codecs import BitstreamError, Codec
from ...codecs.registry import codec_class_by_id
from ..errors import RequestError
from ..protocol import CodecContext, ErrorCode


def codec_context(codec: Codec, send: bool = True) -> CodecContext | None:
    """What an OPEN carries for ``codec``: its session context (bytes, or only their digest
    when ``send`` is False), None for a codec without one. A wrapper's context is named by
    the codec that owns it (``resilient`` over ``tokenwise``: tokenwise's)."""
    owner = codec.context_owner()
    data = owner.session_context()
    if data is None:
        return None
    return CodecContext.of(owner.codec_id, data, send)


#: the largest codec context a deployment takes from a client by default
#: (``splitcomp serve --max-context-bytes``)
MAX_CONTEXT_BYTES = 1 << 20


class ContextStore:
    """A deployment's codec contexts. ``max_bytes``: largest context accepted;
    ``max_contexts``: distinct contexts held at most (kept for reuse or in use by sessions);
    an upload beyond it forgets the least recently used unused one, or is refused
    (``OVERLOADED``) when all are in use. ``local``: also use the contexts this process holds
    (``Codec.local_context``); False: only those clients sent."""

    def __init__(self, max_bytes: int = MAX_CONTEXT_BYTES, max_contexts: int = 64,
                 local: bool = True) -> None:
        if max_bytes < 0 or max_contexts < 1:
            raise ValueError("max_bytes must be >= 0 and max_contexts >= 1")
        self.max_bytes = max_bytes
        self.max_contexts = max_contexts
        self.local = local
        #: (codec id, SHA-256) -> parsed context, least recently used first
        self._recent: OrderedDict[tuple[int, bytes], object] = OrderedDict()
        self._live: weakref.WeakValueDictionary[tuple[int, bytes], object] = (
            weakref.WeakValueDictionary())
        self.uploaded = 0  #: contexts accepted from clients
        self.upload_bytes = 0

    def __len__(self) -> int:
        """Distinct contexts held (kept or in use by a session)."""
        return len(self._live)

    def resolve(self, ref: CodecContext) -> dict[int, object]:
        """The contexts (key -> context) a session opened with ``ref`` decodes with; raises
        :class:`RequestError` (``CONTEXT_UNKNOWN``, ``TOO_LARGE``, ``BAD_BITSTREAM``,
        ``CODEC_NOT_ALLOWED``, ``OVERLOADED``)."""
        cls = codec_class_by_id(ref.codec_id)
        if cls is None or not cls.has_session_context:
            raise RequestError(ErrorCode.CODEC_NOT_ALLOWED,
                               f"codec id {ref.codec_id} has no session context")
        key = (ref.codec_id, bytes(ref.digest))
        ctx = self._find(cls, key)
        if ctx is None and ref.id_only:
            raise RequestError(ErrorCode.CONTEXT_UNKNOWN, f"{cls.name} codec context "
                               f"{key[1][:4].hex()}... unknown here: open again with its bytes")
        if ctx is None:
            ctx = self._upload(cls, key, ref.data)
        return {cls.context_key(ctx): ctx}

    def _find(self, cls: type[Codec], key: tuple[int, bytes]) -> object | None:
        ctx = self._recent.get(key)
        if ctx is not None:
            self._recent.move_to_end(key)
            return ctx
        ctx = self._live.get(key)
        if ctx is None:  # the operator's, registered in this process
            if not self.local:
                return None
            ctx = cls.local_context(key[1])
            if ctx is None:
                return None
        self._keep(key, ctx)
        return ctx

    def _upload(self, cls: type[Codec], key: tuple[int, bytes], data: bytes | memoryview
                ) -> object:
        if len(data) > self.max_bytes:
            raise RequestError(ErrorCode.TOO_LARGE, f"codec context of {len(data)} bytes "
                               f"(limit {self.max_bytes})")
        raw = bytes(data)
        if hashlib.sha256(raw).digest() != key[1]:
            raise RequestError(ErrorCode.BAD_BITSTREAM, "codec context does not match its "
                               "SHA-256")
        try:
            ctx = cls.load_context(raw)
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None
        self._keep(key, ctx)
        self.uploaded += 1
        self.upload_bytes += len(raw)
        return ctx

    def _keep(self, key: tuple[int, bytes], ctx: object) -> None:
        if key not in self._live:
            self._make_room()
            if len(self._live) >= self.max_contexts:
                raise RequestError(ErrorCode.OVERLOADED, f"{len(self._live)} codec contexts in "
                                   f"use (limit {self.max_contexts})")
        self._recent[key] = ctx
        self._recent.move_to_end(key)
        self._live[key] = ctx

    def _make_room(self) -> None:
        """Forget unused contexts, least recently used first, until one more fits (those a
        session still holds stay, in their place)."""
        in_use = []
        for d in list(self._recent):
            if len(self._live) < self.max_contexts:
                break
            ref = weakref.ref(self._recent.pop(d))
            if ref() is not None:  # a session still holds it: no room made, keep it
                in_use.append(d)
                self._recent[d] = ref()
        for d in reversed(in_use):
            self._recent.move_to_end(d, last=False)

