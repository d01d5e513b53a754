"""Decode many bitstreams in one call (a server's batch): every header first, then payloads.

:func:`decode_batch` reads and checks every stream's header (CRC, :class:`DecodeLimits`, the
caller's ``check``: an allow-list, shapes) before it decodes any payload, so a stream that a
check refuses costs no decoder work however the batch is ordered; then it decodes the
payloads that passed, in the caller's ``executor`` when one is given (in a few chunks: a
decoder that releases the GIL runs on several cores) or here. Each stream gets its own
:class:`BatchItem`: its tensors, or the exception that stopped it; one bad stream never fails
the others. ``raw=True`` keeps the float tensors of codecs with a raw form
(:meth:`~.base.Codec.decode_raw`) as :class:`~.base.RawArray`, for a runtime that dequantizes
many of them at once on its own device. Numpy only: no torch here.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ._crc import crc32
from .container import CRC_BYTES, MAGIC, RESILIENT_MAGIC, Header, decode_payloads, read_header
from .contexts import context_scope
from .errors import DEFAULT_LIMITS, DecodeLimits
from .resilient import concealing


@dataclass
class BatchItem:
    """One stream's outcome: ``parts`` (``(dtype code, numpy array or RawArray)`` per tensor,
    float tensors as float32 or raw) or ``error``, with its figures."""

    header: Header | None = None
    parts: list[tuple[int, Any]] | None = None
    error: Exception | None = None
    concealed: int = 0  #: resilient slices concealed (``conceal=True``)
    #: CPU of decoding its payload in a pool thread (0.0 when the calling thread decoded it:
    #: that is the caller's own CPU, which it measures itself)
    cpu_s: float = 0.0
    thread: int = 0  #: the thread that decoded its payload (``threading.get_ident()``)
    _codec: Any = field(default=None, repr=False)
    _pos: int = field(default=0, repr=False)


def _decode_chunk(chunk: Sequence[tuple[BatchItem, Any]], limits: DecodeLimits, raw: bool,
                  conceal: bool, contexts: Mapping[int, object] | None,
                  timed: bool = True) -> None:
    """Decode the payloads of ``chunk`` in this thread (each stream's error kept on it);
    ``timed``: record each one's CPU (pool threads; the caller's own share is not timed)."""
    thread = threading.get_ident()
    clock = time.thread_time if timed else None
    with _scope(contexts), concealing() if conceal else nullcontext() as counter:
        for item, data in chunk:
            c0 = clock() if clock is not None else 0.0
            before = counter.slices if counter is not None else 0
            try:
                item.parts = decode_payloads(data, item.header, item._codec, item._pos,
                                             limits, raw)
            except Exception as e:  # noqa: BLE001 - the stream's own error, for its caller
                item.error = e
            if counter is not None:
                item.concealed = counter.slices - before
            item._codec, item.thread = None, thread
            if clock is not None:
                item.cpu_s = clock() - c0


def _scope(contexts: Mapping[int, object] | None) -> Any:
    return nullcontext() if contexts is None else context_scope(contexts)


def _seen_header(data: Any, seen: dict, sizes: list[int]) -> tuple[Header, Any, int] | None:
    """The parsed header of a stream whose header bytes and length equal those of one parsed
    before in this batch (clients send the same header request after request), once this
    stream's own CRC checks; else None (then :func:`read_header` parses it, and says what is
    wrong). Full streams only: what :func:`read_header` reads of them is those bytes.
    ``sizes``: the header sizes in ``seen``, each once."""
    if not sizes:
        return None
    view = memoryview(data).cast("B")
    n = len(view)
    for size in sizes:
        hit = seen.get((n, size, bytes(view[:size])))
        if hit is None:
            continue
        header, _, crc = hit
        body_end = n - CRC_BYTES
        if view[:2] == MAGIC:
            ok = crc32(view[:body_end]) == int.from_bytes(view[body_end:], "little")
        else:  # resilient: the CRC of the header, the same bytes
            ok = int.from_bytes(view[body_end:], "little") == crc
        return hit[1] if ok else None
    return None


def _remember(data: Any, parsed: tuple[Header, Any, int], seen: dict, sizes: list[int]
              ) -> None:
    view = memoryview(data).cast("B")
    pos = parsed[2]
    if bytes(view[:2]) in (MAGIC, RESILIENT_MAGIC) and pos == parsed[0].header_bytes:
        crc = int.from_bytes(view[-CRC_BYTES:], "little")
        seen[(len(view), pos, bytes(view[:pos]))] = (parsed[0], parsed, crc)
        if pos not in sizes:
            sizes.append(pos)


def decode_batch(
    blobs: Sequence[bytes | bytearray | memoryview],
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    check: Callable[[Header], object] | None = None,
    raw: bool = False,
    conceal: bool = False,
    contexts: Mapping[int, object] | None = None,
    executor: Executor | None = None,
    chunks: int = 2,
) -> list[BatchItem]:
    """One :class:`BatchItem` per stream of ``blobs``, in order; never raises for a stream.

    ``check`` sees each validated header before any payload of the batch is decoded and may
    raise (that stream's error). ``raw``: keep raw forms (see the module docstring).
    ``conceal``: resilient streams conceal the slices that fail their checks (counted in
    ``concealed``) instead of failing. ``contexts`` as in :func:`~.container.unpack`.
    ``executor``: where payloads decode, in ``chunks`` tasks of consecutive streams (None:
    in this thread).
    """
    items = [BatchItem() for _ in blobs]
    todo: list[tuple[BatchItem, Any]] = []
    seen: dict[tuple[int, int, bytes], tuple[Header, Any, int]] = {}
    sizes: list[int] = []
    for item, data in zip(items, blobs, strict=True):
        try:
            parsed = _seen_header(data, seen, sizes)
            if parsed is None:
                with _scope(contexts):
                    parsed = read_header(data, limits)
                _remember(data, parsed, seen, sizes)
            item.header, item._codec, item._pos = parsed
            if check is not None:
                check(item.header)
            todo.append((item, data))
        except Exception as e:  # noqa: BLE001 - the stream's own error
            item.error, item._codec = e, None
    if executor is None or len(todo) < 2 or chunks < 2:
        _decode_chunk(todo, limits, raw, conceal, contexts, timed=False)
        return items
    size = -(-len(todo) // chunks)
    parts = [todo[i : i + size] for i in range(0, len(todo), size)]
    # each task runs in a copy of this thread's context: the scopes it is in go with it
    futures = [executor.submit(contextvars.copy_context().run, _decode_chunk, p, limits, raw,
                               conceal, contexts) for p in parts[1:]]
    _decode_chunk(parts[0], limits, raw, conceal, contexts, timed=False)  # a share here too
    for f in futures:
        f.result()
    return items
