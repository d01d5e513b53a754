"""Codec session contexts on both ends of an LLM session (today: the ``tokenwise`` codec's).

A context (``docs/protocol.md``, "Codec contexts") travels in the OPEN request: the client
first names it by its SHA-256 only; a server that lacks it answers ``CONTEXT_UNKNOWN`` and the
client opens again with the bytes (~47 KB for SmolLM2, once per server, not per session).

:class:`ContextStore` is a deployment's side: it validates and keeps uploaded contexts in a
bounded LRU, finds the operator's (registered or in ``$SPLITCOMP_TOKENWISE_CONTEXTS``), and
gives each session the contexts it opened with; the session's steps are decoded with those
(:func:`~splitcomp.codecs._tokenwise_context.context_scope`), never with another client's
context under the same 20-bit id. Used from the server's event loop thread only.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

from ...codecs import BitstreamError, Codec
from ...codecs import _tokenwise_context as twc
from ...codecs.tokenwise import TokenwiseCodec
from ..errors import RequestError
from ..protocol import CodecContext, ErrorCode

#: codec id of the one codec with a session context
TOKENWISE_ID = TokenwiseCodec.codec_id


def codec_context(codec: Codec, send: bool = True) -> CodecContext | None:
    """What an OPEN carries for ``codec``: its session context (bytes, or only their digest
    when ``send`` is False), None for a codec without one."""
    ctx = getattr(codec, "ctx", None)
    if not isinstance(codec, TokenwiseCodec) or ctx is None:
        return None
    return CodecContext.of(TOKENWISE_ID, ctx.to_bytes(), send)


class ContextStore:
    """A deployment's codec contexts. ``max_bytes``: largest context accepted;
    ``max_contexts``: distinct contexts held at most (kept for reuse or in use by sessions);
    an upload beyond it forgets the least recently used unused one, or is refused
    (``OVERLOADED``) when all are in use. ``local``: also use the contexts this process has
    (registered, or in ``$SPLITCOMP_TOKENWISE_CONTEXTS``); False: only those clients sent."""

    def __init__(self, max_bytes: int = 1 << 20, max_contexts: int = 64,
                 local: bool = True) -> None:
        if max_bytes < 0 or max_contexts < 1:
            raise ValueError("max_bytes must be >= 0 and max_contexts >= 1")
        self.max_bytes = max_bytes
        self.max_contexts = max_contexts
        self.local = local
        self._recent: OrderedDict[bytes, twc.TokenwiseContext] = OrderedDict()
        self._live: weakref.WeakValueDictionary[bytes, twc.TokenwiseContext] = (
            weakref.WeakValueDictionary())
        self.uploaded = 0  #: contexts accepted from clients
        self.upload_bytes = 0

    def __len__(self) -> int:
        """Distinct contexts held (kept or in use by a session)."""
        return len(self._live)

    def resolve(self, ref: CodecContext) -> dict[int, twc.TokenwiseContext]:
        """The contexts (id -> context) a session opened with ``ref`` decodes with; raises
        :class:`RequestError` (``CONTEXT_UNKNOWN``, ``TOO_LARGE``, ``BAD_BITSTREAM``,
        ``CODEC_NOT_ALLOWED``, ``OVERLOADED``)."""
        if ref.codec_id != TOKENWISE_ID:
            raise RequestError(ErrorCode.CODEC_NOT_ALLOWED,
                               f"codec id {ref.codec_id} has no session context")
        digest = bytes(ref.digest)
        ctx = self._find(digest)
        if ctx is None and ref.id_only:
            raise RequestError(ErrorCode.CONTEXT_UNKNOWN, "codec context "
                               f"{_cid(digest)} unknown here: open again with its bytes")
        if ctx is None:
            ctx = self._upload(digest, ref.data)
        return {_cid(digest): ctx}

    def _find(self, digest: bytes) -> twc.TokenwiseContext | None:
        ctx = self._recent.get(digest)
        if ctx is not None:
            self._recent.move_to_end(digest)
            return ctx
        ctx = self._live.get(digest)
        if ctx is None:  # the operator's: registered, or in a contexts folder
            if not self.local:
                return None
            try:
                ctx = twc.get_context(_cid(digest))
            except BitstreamError:
                return None
            if hashlib.sha256(ctx.to_bytes()).digest() != digest:
                return None  # another context under that 20-bit id: not the one asked for
        self._keep(digest, ctx)
        return ctx

    def _upload(self, digest: bytes, data: bytes | memoryview) -> twc.TokenwiseContext:
        if len(data) > self.max_bytes:
            raise RequestError(ErrorCode.TOO_LARGE, f"codec context of {len(data)} bytes "
                               f"(limit {self.max_bytes})")
        raw = bytes(data)
        if hashlib.sha256(raw).digest() != digest:
            raise RequestError(ErrorCode.BAD_BITSTREAM, "codec context does not match its "
                               "SHA-256")
        try:
            ctx = twc.TokenwiseContext.from_bytes(raw)
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None
        self._keep(digest, ctx)
        self.uploaded += 1
        self.upload_bytes += len(raw)
        return ctx

    def _keep(self, digest: bytes, ctx: twc.TokenwiseContext) -> None:
        if digest not in self._live:
            self._make_room()
            if len(self._live) >= self.max_contexts:
                raise RequestError(ErrorCode.OVERLOADED, f"{len(self._live)} codec contexts in "
                                   f"use (limit {self.max_contexts})")
        self._recent[digest] = ctx
        self._recent.move_to_end(digest)
        self._live[digest] = ctx

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


def _cid(digest: bytes) -> int:
    """The 20-bit context id of the bytes whose SHA-256 is ``digest``."""
    return (int.from_bytes(digest[:3], "little") & 0xFFFFF) or 1
