"""The ``asyncio`` transport: a plain ``asyncio.Protocol`` per connection with this
package's own RFC 6455 server framing (:mod:`.rfc6455`). No task per connection: requests are
admitted from ``data_received``, answers written from ``Conn.send``."""

from __future__ import annotations

import asyncio
import ssl
from email.utils import formatdate
from http import HTTPStatus

from .. import protocol as P
from . import Transport
from . import rfc6455 as W
from .base import WRITE_LIMIT_BYTES, Accept, Reply, StreamLink, StreamServer

#: seconds a client has to send its whole upgrade request (websockets' open_timeout)
HANDSHAKE_TIMEOUT_S = 10.0


def _reply_bytes(reply: Reply) -> bytes:
    phrase = HTTPStatus(reply.status).phrase
    headers = [("Date", formatdate(usegmt=True)), ("Connection", "close"),
               ("Server", "splitcomp"), ("Content-Type", reply.content_type),
               ("Content-Length", str(len(reply.body))), *reply.headers]
    return W.http_response(reply.status, phrase, headers, reply.body)


class _Connection(StreamLink, asyncio.Protocol):
    """One client connection: the HTTP upgrade, then frames."""

    def __init__(self, owner: AsyncioTransport) -> None:
        self.owner = owner
        self._init_link()
        self.raw: asyncio.Transport | None = None
        self.head = bytearray()  #: the upgrade request while it arrives
        self.reader: W.Reader | None = None
        self.broken = False  #: the stream cannot be parsed further: input is discarded
        self.timer: asyncio.TimerHandle | None = None
        self.scheduled = False  #: a parse of buffered frames is scheduled (after a pause)

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        transport.set_write_buffer_limits(high=WRITE_LIMIT_BYTES)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        if self.reader is not None:
            self.reader.feed(data)
            self.parse()
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > W.MAX_HEAD_BYTES:
                self._http(Reply(431, b"request head too large\n"))
            return
        if end > W.MAX_HEAD_BYTES:
            self._http(Reply(431, b"request head too large\n"))
            return
        rest = bytes(self.head[end + 4:])
        head, self.head = bytes(self.head[:end]), bytearray()
        self._upgrade(head, rest)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.lost()
        if self.conn is not None:
            self.owner.gate.disconnected(self.conn)
            self.owner.link_closed(self)

    # -- handshake -----------------------------------------------------------------------
    def _upgrade(self, head: bytes, rest: bytes) -> None:
        try:
            method, path, headers = W.parse_request(head)
            if method != "GET":
                raise W.HttpError(405, "GET only")
            answer = self.owner.gate.handshake(path, headers.get)
            if isinstance(answer, Reply):
                self._http(answer)
                return
            accept = W.accept_key(headers)
        except W.HttpError as e:
            self._http(Reply(e.status, f"{e}\n".encode()))
            return
        self._open(answer, accept, rest)

    def _http(self, reply: Reply) -> None:
        assert self.raw is not None
        self.raw.write(_reply_bytes(reply))
        self.raw.close()
        self.broken = True

    def _open(self, accept: Accept, key: str, rest: bytes) -> None:
        assert self.raw is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", key), ("Date", formatdate(usegmt=True)),
                   ("Server", "splitcomp"), *accept.headers]
        self.raw.write(W.http_response(101, "Switching Protocols", headers))
        self.reader = W.Reader(self.owner.options.max_frame_bytes)
        self.conn = self.owner.gate.connected(self, accept, id(self))
        self.owner.link_opened(self)
        if rest:
            self.reader.feed(rest)
            self.parse()

    # -- frames --------------------------------------------------------------------------
    def parse(self) -> None:
        """Handle the buffered frames, stopping while the connection's reading is paused."""
        conn, reader = self.conn, self.reader
        assert conn is not None and reader is not None
        self.scheduled = False
        try:
            while conn.reading or self.closing:
                item = reader.next()
                if item is None:
                    return
                opcode, payload = item
                if opcode == W.OP_BINARY:
                    if not self.closing:
                        error = conn.received(payload)
                        if error is not None:
                            self.fail(error, P.CLOSE_PROTOCOL_ERROR, "unparsable frame")
                elif opcode == W.OP_CLOSE:
                    self._peer_closed(payload)
                    return
                elif opcode == W.OP_PING:
                    if not self.closing and not self.write_paused:  # a peer that does not
                        self._write(W.frame(W.OP_PONG, payload))  # read gets no more pongs
                elif opcode == W.OP_PONG:
                    self.awaiting_pong = False
                elif not self.closing:  # a text message
                    self.close(P.CLOSE_UNSUPPORTED_DATA, "binary frames only")
        except W.ProtocolError as e:
            self._fail_stream(e.code, e.reason)

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, _ = W.parse_close(payload)
        except W.ProtocolError as e:
            self._fail_stream(e.code, e.reason)
            return
        if not self.closing:  # the peer closes first: answer with its code
            self.closing = True
            if self.conn is not None:
                self.conn.closed = True
            self._write(W.close_frame(code) if code is not None else W.frame(W.OP_CLOSE, b""))
        self.broken = True
        self.closed_by_peer()

    def _fail_stream(self, code: int, reason: str) -> None:
        """The input cannot be parsed further: close frame, end our side of the stream, and
        discard what still comes until the peer closes (or a second passes)."""
        self.broken = True
        if not self.closing:
            self.close(code, reason)
        assert self.raw is not None
        if self.raw.can_write_eof():
            self.raw.write_eof()
        else:
            self.raw.close()

    def resume_reading(self) -> None:
        super().resume_reading()
        if not self.scheduled and self.reader is not None and not self.broken:
            self.scheduled = True  # frames may wait in the buffer: not from inside send()
            asyncio.get_running_loop().call_soon(self._resume_parse)

    def _resume_parse(self) -> None:
        if not self.broken and self.raw is not None and not self.raw.is_closing():
            self.parse()

    # -- StreamLink ----------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        assert self.raw is not None
        if not self.raw.is_closing():
            self.raw.write(data)

    def _write_binary(self, data: bytes, _frame=W.frame) -> None:  # noqa: ANN001
        raw = self.raw
        assert raw is not None
        if not raw.is_closing():
            raw.write(_frame(W.OP_BINARY, data))

    def _write_close(self, code: int, reason: str) -> None:
        self._write(W.close_frame(code, reason))

    def _write_ping(self) -> None:
        self._write(W.frame(W.OP_PING, b""))

    def _raw(self) -> asyncio.BaseTransport:
        assert self.raw is not None
        return self.raw


class AsyncioTransport(StreamServer, Transport):
    """Listens with ``loop.create_server``; one :class:`_Connection` per client."""

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), host, port,
                                          ssl=ssl_context)
        return self.started(server)


TRANSPORT = AsyncioTransport
__all__ = ["TRANSPORT", "AsyncioTransport"]
