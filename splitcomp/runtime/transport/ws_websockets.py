"""The ``websockets`` transport: the ``websockets`` library's asyncio server, with one read
loop and one writer task per connection (the server's transport before picows and our own
framing were measured: ``docs/transport.md``)."""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import protocol as P
from . import Transport
from .base import CLOSE_TIMEOUT_S, WRITE_LIMIT_BYTES, Accept, Conn, Gate, Options, log

#: received frames a connection may hold unread, in bytes: websockets' queue of incoming
#: frames is sized from it and the largest frame (2 to 64 frames)
INPUT_BUFFER_BYTES = 16 << 20


def input_queue_frames(max_frame_bytes: int) -> int:
    """How many received frames a connection buffers before it stops reading the socket."""
    return max(2, min(64, INPUT_BUFFER_BYTES // max(max_frame_bytes, 1)))


class _Link:
    """A websockets connection as :class:`~.base.Conn` drives it: a writer task sends the
    queued answers, the read loop waits on :attr:`reading` while reading is paused."""

    def __init__(self, ws: ServerConnection, closing: set[asyncio.Task]) -> None:
        self.ws = ws
        self.conn: Conn | None = None
        self.wake = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self.closer: asyncio.Task | None = None
        self._closing = closing

    def flush(self) -> None:
        self.wake.set()

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()
        self.wake.set()  # a dropped queue: let the writer see it

    def close(self, code: int, reason: str) -> None:
        if self.closer is None:
            task = self.closer = asyncio.get_running_loop().create_task(self._close(code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self, code: int, reason: str) -> None:
        """Close; a peer that does not answer the close frame is dropped after a second."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.ws.transport.abort()

    async def write_loop(self) -> None:
        conn = self.conn
        assert conn is not None
        out, wake, ws = conn.out, self.wake, self.ws
        try:
            while not conn.closed:
                await wake.wait()
                wake.clear()
                while out and not conn.closed:
                    frame = out[0]
                    await ws.send(frame)  # waits while the socket's write buffer is full
                    if conn.closed:
                        break
                    out.popleft()
                    conn.sent(len(frame))
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - never expected; keep the server up
            log.exception("writer failed")
        finally:
            conn.finish()
            self.reading.set()


class WebsocketsTransport(Transport):
    """``websockets.asyncio.server.serve`` with the server's handshake hooks."""

    def __init__(self, gate: Gate, options: Options) -> None:
        super().__init__(gate, options)
        self._server: object = None
        self._closing: set[asyncio.Task] = set()  #: closes of connections (1008)
        # accepted handshakes waiting for their handler (weak: a connection lost in between
        # leaves nothing behind)
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, Accept] = (
            weakref.WeakKeyDictionary())

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        o = self.options
        self._server = srv = await ws_serve(
            self._handler, host, port, ssl=ssl_context,
            process_request=self._process_request, process_response=self._process_response,
            max_size=o.max_frame_bytes, compression=None,
            max_queue=input_queue_frames(o.max_frame_bytes), write_limit=WRITE_LIMIT_BYTES,
            ping_interval=o.ping_interval, ping_timeout=o.ping_interval,
            server_header="splitcomp",
        )
        return srv.sockets[0].getsockname()[1]

    def pending(self) -> int:
        return len(self._accepted)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        answer = self.gate.handshake(request.path, request.headers.get)
        if isinstance(answer, Accept):
            self._accepted[connection] = answer
            return None
        resp = connection.respond(HTTPStatus(answer.status), answer.body.decode())
        del resp.headers["Content-Type"]
        resp.headers["Content-Type"] = answer.content_type
        for k, v in answer.headers:
            resp.headers[k] = v
        return resp

    def _process_response(self, connection: ServerConnection, request: Request,
                          response: Response) -> None:
        accept = self._accepted.get(connection)
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS and accept is not None:
            for k, v in accept.headers:
                response.headers[k] = v
        else:
            self._accepted.pop(connection, None)

    async def _handler(self, ws: ServerConnection) -> None:
        accept = self._accepted.pop(ws, None)
        if accept is None:  # pragma: no cover - every accepted handshake recorded one
            await ws.close(P.CLOSE_PROTOCOL_ERROR, "no handshake record")
            return
        link = _Link(ws, self._closing)
        conn = link.conn = self.gate.connected(link, accept, ws.id)
        writer = asyncio.create_task(link.write_loop())
        received, reading = conn.received, link.reading
        try:
            while not conn.closed:
                if not reading.is_set():  # answers pile up unread: stop reading requests
                    await reading.wait()
                    continue
                frame = await ws.recv()
                if isinstance(frame, str):
                    await ws.close(P.CLOSE_UNSUPPORTED_DATA, "binary frames only")
                    break
                error = received(frame)
                if error is not None:  # not even a request id: answer id 0 and hang up
                    await ws.send(error)
                    await ws.close(P.CLOSE_PROTOCOL_ERROR, "unparsable frame")
                    break
            if link.closer is not None:
                await link.closer
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
        finally:
            conn.finish()
            writer.cancel()
            self.gate.disconnected(conn)

    def stop_listening(self) -> None:
        self._server.server.close()  # type: ignore[attr-defined]

    async def close_all(self, code: int, reason: str, timeout_s: float) -> None:
        srv = self._server
        srv.close(code=code, reason=reason)  # type: ignore[attr-defined]
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(srv.wait_closed(), timeout_s)  # type: ignore[attr-defined]
        except TimeoutError:  # peers that never finish closing: stop waiting for them
            lingering = list(srv.handler_tasks)  # type: ignore[attr-defined]
            log.warning("%d connection(s) still open after the grace period: dropped",
                        len(lingering))
            for ws in list(srv.connections):  # type: ignore[attr-defined]
                ws.transport.abort()
            for task in lingering:
                task.cancel()
            await asyncio.wait(lingering, timeout=1.0)
        if self._closing:
            await asyncio.wait(self._closing, timeout=max(2.0 - (time.monotonic() - t0), 0.1))
        self._server = None


TRANSPORT = WebsocketsTransport
__all__ = ["TRANSPORT", "WebsocketsTransport", "input_queue_frames"]
