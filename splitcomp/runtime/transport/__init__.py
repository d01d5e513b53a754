"""Server transports: the same WebSocket wire bytes (``docs/protocol.md``) from three
implementations, chosen by name (``Server(..., transport=NAME)``, ``splitcomp serve
--transport``). Figures: ``docs/transport.md`` (``benchmarks/transport.py``).

- ``websockets``: the ``websockets`` library's asyncio server (a read loop and a writer task
  per connection);
- ``picows``: picows (Cython framing, callbacks; ``pip install splitcomp[fast]``);
- ``asyncio``: a plain ``asyncio.Protocol`` with this package's own RFC 6455 server framing
  (:mod:`.rfc6455`), callbacks, no task per connection.

A transport is one module here (a :class:`Transport` subclass as its ``TRANSPORT``) and one
line in :data:`TRANSPORTS`; it hands each connection to the server's :class:`~.base.Gate`.
"""

from __future__ import annotations

import importlib
import importlib.util
import ssl

from .base import Accept, Conn, Gate, Link, Options, Reply

#: transport name -> module (in this package) holding its ``Transport`` class
TRANSPORTS = {
    "websockets": "ws_websockets",
    "picows": "ws_picows",
    "asyncio": "ws_asyncio",
}
#: fastest first, by server CPU per request (docs/transport.md); all pass every protocol test
PREFERENCE = ("picows", "asyncio", "websockets")


def _installed(name: str) -> bool:
    return name != "picows" or importlib.util.find_spec("picows") is not None


#: the fastest transport installed: picows with ``splitcomp[fast]``, else our asyncio framing
DEFAULT = next(name for name in PREFERENCE if _installed(name))


class Transport:
    """Listens on a port and speaks WebSocket for a :class:`~.base.Gate`."""

    def __init__(self, gate: Gate, options: Options) -> None:
        self.gate = gate
        self.options = options

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen (TLS with ``ssl_context``); returns the bound port."""
        raise NotImplementedError

    def pending(self) -> int:
        """Handshakes accepted whose connection has not opened yet."""
        return 0

    def stop_listening(self) -> None:
        """Close the listening socket (the port is free for a restart)."""
        raise NotImplementedError

    async def close_all(self, code: int, reason: str, timeout_s: float) -> None:
        """Close every connection (``code``), waiting at most ``timeout_s`` for the peers'
        close frames before dropping them."""
        raise NotImplementedError


def transport_class(name: str) -> type[Transport]:
    """The transport named ``name`` (ValueError for an unknown one, ImportError naming the
    extra to install when its library is missing)."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r} (one of {', '.join(TRANSPORTS)})")
    module = importlib.import_module(f".{TRANSPORTS[name]}", __name__)
    return module.TRANSPORT


__all__ = ["DEFAULT", "PREFERENCE", "TRANSPORTS", "Accept", "Conn", "Gate", "Link", "Options",
           "Reply", "Transport", "transport_class"]
