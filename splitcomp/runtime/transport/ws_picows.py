"""The ``picows`` transport: picows (Cython framing and handshake, callbacks) with a listener
per connection; requests are admitted from ``on_ws_frame``, answers written from
``Conn.send``. picows hands over frames, not messages: fragments are joined here and the
message size limit (1009) is checked on their sum. Plain TCP runs on picows' aiofastnet
transports (installed with it); TLS on asyncio's own (the standard library's ``ssl``), not on
aiofastnet's TLS engine."""

from __future__ import annotations

import asyncio
import logging
import ssl

from picows import (
    WSCloseCode,
    WSListener,
    WSMsgType,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from .. import protocol as P
from . import Transport
from .base import WRITE_LIMIT_BYTES, Accept, Reply, StreamLink, StreamServer, log
from .rfc6455 import ProtocolError

#: picows' own log: a line per connection (INFO) and per peer's protocol error (ERROR), which
#: websockets keeps at DEBUG: quiet here (our callbacks' failures go to splitcomp.runtime)
_PICOWS_LOG = logging.getLogger("splitcomp.runtime.picows")
_PICOWS_LOG.setLevel(logging.CRITICAL)

_BINARY, _CONT, _CLOSE, _PONG = WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE, \
    WSMsgType.PONG


class _Listener(WSListener, StreamLink):
    """One client connection."""

    def __init__(self, owner: PicowsTransport, accept: Accept) -> None:
        super().__init__()
        self._init_link()
        self.owner = owner
        self.accept = accept
        self.ws = None
        self.frags: list[bytes] | None = None  #: a fragmented message being joined
        self.frag_len = 0

    def on_ws_connected(self, transport) -> None:  # noqa: ANN001 - picows.WSTransport
        self.ws = transport
        transport.underlying_transport.set_write_buffer_limits(high=WRITE_LIMIT_BYTES)
        self.conn = self.owner.gate.connected(self, self.accept, id(self))
        self.owner.link_opened(self)

    def on_ws_disconnected(self, transport) -> None:  # noqa: ANN001
        self.lost()
        if self.conn is not None:
            self.owner.gate.disconnected(self.conn)
            self.owner.link_closed(self)

    def on_ws_frame(self, transport, frame) -> None:  # noqa: ANN001 - picows types
        try:
            self._frame(frame)
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
            self.close(1011, "internal error")

    def _frame(self, frame) -> None:  # noqa: ANN001
        t = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension was negotiated
            self._fail(ProtocolError(P.CLOSE_PROTOCOL_ERROR, "reserved bits set"))
        elif t is _BINARY and frame.fin and self.frags is None:
            if not self.closing:
                assert self.conn is not None
                error = self.conn.received(frame.get_payload_as_bytes())
                if error is not None:
                    self.fail(error, P.CLOSE_PROTOCOL_ERROR, "unparsable frame")
        elif t is _BINARY or t is _CONT:
            self._fragment(frame)
        elif t is _CLOSE:
            self._peer_closed(frame.get_close_code() if frame.payload_size else 1000)
        elif t is _PONG:
            self.awaiting_pong = False
        elif t is WSMsgType.PING:
            if not self.closing and not self.write_paused:  # a peer that does not read gets
                self.ws.send_pong(frame.get_payload_as_bytes())  # no more pongs
        elif t is WSMsgType.TEXT:
            if not self.closing:
                self.close(P.CLOSE_UNSUPPORTED_DATA, "binary frames only")

    def _fragment(self, frame) -> None:  # noqa: ANN001
        if (frame.msg_type is _CONT) != (self.frags is not None):
            self._fail(ProtocolError(P.CLOSE_PROTOCOL_ERROR, "bad fragment sequence"))
            return
        if self.frags is None:
            self.frags, self.frag_len = [], 0
        self.frag_len += frame.payload_size or 1  # empty fragments count: the list stays bounded
        if self.frag_len > self.owner.options.max_frame_bytes:
            self._fail(ProtocolError(P.CLOSE_TOO_BIG,
                                     f"message over {self.owner.options.max_frame_bytes} bytes"))
            return
        self.frags.append(frame.get_payload_as_bytes())
        if frame.fin:
            message, self.frags = b"".join(self.frags), None
            if not self.closing:
                assert self.conn is not None
                error = self.conn.received(message)
                if error is not None:
                    self.fail(error, P.CLOSE_PROTOCOL_ERROR, "unparsable frame")

    def _fail(self, e: ProtocolError) -> None:
        self.frags = None
        if not self.closing:
            self.close(e.code, e.reason)

    def _peer_closed(self, code: int) -> None:
        """The peer's close frame (picows checked its code and reason)."""
        if not self.closing:  # the peer closes first: answer with its code
            self.closing = True
            if self.conn is not None:
                self.conn.closed = True
            self.ws.send_close(WSCloseCode(code))
        self.closed_by_peer()

    # -- StreamLink ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        StreamLink.pause_writing(self)

    def resume_writing(self) -> None:
        StreamLink.resume_writing(self)

    def _write_binary(self, data: bytes) -> None:
        self.ws.send(_BINARY, data)

    def _write_close(self, code: int, reason: str) -> None:
        self.ws.send_close(WSCloseCode(code), reason.encode())

    def _write_ping(self) -> None:
        self.ws.send_ping()

    def _raw(self) -> asyncio.BaseTransport:
        return self.ws.underlying_transport


class PicowsTransport(StreamServer, Transport):
    """``picows.ws_create_server`` with the server's handshake hooks."""

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        server = await ws_create_server(
            self._route, host, port, ssl=ssl_context, max_frame_size=self.options.max_frame_bytes,
            websocket_handshake_timeout=10, enable_auto_ping=False, enable_auto_pong=False,
            logger_name=_PICOWS_LOG, use_aiofastnet=ssl_context is None)
        return self.started(server)

    def _route(self, request) -> WSUpgradeResponseWithListener:  # noqa: ANN001
        path = request.path.decode("latin-1")
        answer = self.gate.handshake(path, request.headers.get)
        if isinstance(answer, Reply):
            headers = [("Server", "splitcomp"), ("Content-Type", answer.content_type),
                       *answer.headers]
            if answer.status < 400:
                response = WSUpgradeResponse.create_ok_response(answer.body, headers)
            else:
                response = WSUpgradeResponse.create_error_response(answer.status, answer.body,
                                                                   headers)
            return WSUpgradeResponseWithListener(response, None)
        response = WSUpgradeResponse.create_101_response([("Server", "splitcomp"),
                                                          *answer.headers])
        return WSUpgradeResponseWithListener(response, _Listener(self, answer))


TRANSPORT = PicowsTransport
__all__ = ["TRANSPORT", "PicowsTransport"]
