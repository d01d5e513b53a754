"""TLS contexts from certificate paths (server) and a CA bundle (client)."""

from __future__ import annotations

import ssl
from pathlib import Path

TlsLike = ssl.SSLContext | tuple[str | Path, str | Path] | None


def server_context(tls: TlsLike) -> ssl.SSLContext | None:
    """An SSL context for the server: given as is, or built from ``(cert path, key path)``."""
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    cert, key = tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(url: str, ca: str | Path | None = None,
                   context: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
    """The client's SSL context for ``url``: None for ``ws://``; for ``wss://`` the given
    context, or the system trust store plus ``ca`` (a PEM file, e.g. a self-signed cert)."""
    if not url.startswith("wss://"):
        if context is not None or ca is not None:
            raise ValueError(f"TLS settings given for a plain ws:// url: {url}")
        return None
    if context is not None:
        return context
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
