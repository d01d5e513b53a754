"""Per-session codec contexts in scope while streams decode.

Some codecs code against a *session context* sent once per session
(:attr:`~splitcomp.codecs.base.Codec.has_session_context`); their streams name it by a key
(:meth:`~splitcomp.codecs.base.Codec.context_key`). A server that holds each session's own
contexts decodes that session's streams inside :func:`context_scope` (or passes them as
``contexts=`` to :func:`splitcomp.codecs.decode`), and the codec finds a context there before
the ones registered process-wide: two clients' contexts under the same key never mix.
The scope is a :class:`~contextvars.ContextVar`: per thread and per asyncio task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

__all__ = ["context_scope", "scoped_context"]

_SCOPE: ContextVar[Mapping[int, object] | None] = ContextVar("codec_contexts", default=None)


@contextlib.contextmanager
def context_scope(contexts: Mapping[int, object]) -> Iterator[None]:
    """Within the block, :func:`scoped_context` finds ``contexts`` (key -> loaded context, as
    :meth:`~splitcomp.codecs.base.Codec.load_context` returns them); an enclosing scope is
    hidden until the block ends."""
    token = _SCOPE.set(contexts)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scoped_context(key: int) -> object | None:
    """The context in scope under ``key``, else None."""
    scope = _SCOPE.get()
    return None if scope is None else scope.get(key)
