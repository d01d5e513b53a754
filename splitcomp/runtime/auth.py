"""Bearer tokens per client: a tokens file (``client_id token`` per line) and a constant-time
check of a handshake's ``Authorization: Bearer <token>`` header."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

MIN_TOKEN_CHARS = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Tokens:
    """Which token belongs to which client.

    Tokens are kept as SHA-256 digests; a presented token's digest is compared with every
    stored one by :func:`hmac.compare_digest`, without stopping early, so the time taken says
    nothing about how close a guess was or which client it matched.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        """``tokens``: client id -> token."""
        self._by_digest: dict[bytes, str] = {}
        for client_id, token in tokens.items():
            _check_entry(client_id, token)
            d = _digest(token)
            if d in self._by_digest:
                raise ValueError(f"clients {self._by_digest[d]!r} and {client_id!r} share a token")
            self._by_digest[d] = client_id

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read a tokens file: one ``client_id token`` per line; ``#`` comments, blank lines."""
        return cls(parse_tokens(Path(path).read_text(encoding="utf-8"), source=str(path)))

    def __len__(self) -> int:
        return len(self._by_digest)

    def client_ids(self) -> list[str]:
        return sorted(self._by_digest.values())

    def authenticate(self, authorization: str | None) -> str | None:
        """The client id an ``Authorization`` header value proves, or None."""
        token = bearer_token(authorization)
        if token is None:
            return None
        d = _digest(token)
        match = None
        for stored, client_id in self._by_digest.items():
            if hmac.compare_digest(stored, d):
                match = client_id
        return match


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _check_entry(client_id: str, token: str) -> None:
    if not client_id or any(c.isspace() for c in client_id):
        raise ValueError(f"client id {client_id!r}: must be non-empty without spaces")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"token of {client_id!r}: at least {MIN_TOKEN_CHARS} characters, no "
                         "spaces (e.g. python -c 'import secrets; print(secrets.token_hex(16))')")


def parse_tokens(text: str, source: str = "<tokens>") -> dict[str, str]:
    """Parse tokens-file text into client id -> token, refusing malformed or duplicate lines."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}:{lineno}: expected 'client_id token'")
        client_id, token = parts
        if client_id in out:
            raise ValueError(f"{source}:{lineno}: client {client_id!r} listed twice")
        _check_entry(client_id, token)
        out[client_id] = token
    return out
