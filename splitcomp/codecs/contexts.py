"""Per-session codec contexts in scope while streams decode, and the process-wide registries.

Some codecs code against a *session context* sent once per session
(:attr:`~splitcomp.codecs.base.Codec.has_session_context`); their streams name it by a key
(:meth:`~splitcomp.codecs.base.Codec.context_key`). A server that holds each session's own
contexts decodes that session's streams inside :func:`context_scope` (or passes them as
``contexts=`` to :func:`splitcomp.codecs.decode`), and the codec finds a context there before
the ones registered process-wide: two clients' contexts under the same key never mix.
The scope is a :class:`~contextvars.ContextVar`: per thread and per asyncio task.

What a process holds is a :class:`ContextRegistry` per kind of item (the ``tokenwise``
contexts, the ``bottleneck`` tables, the compact streams' header templates): bounded,
thread-safe, least recently used forgotten first, each item under a small id derived from the
SHA-256 of its bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Generic, TypeVar

from ._crc import crc32
from .bytes_io import Reader
from .errors import BitstreamError, require

__all__ = [
    "PREVIOUS_ROW",
    "ContextRegistry",
    "context_scope",
    "scope_items",
    "scoped_context",
    "seal",
    "unseal",
]

T = TypeVar("T")
BytesLike = bytes | bytearray | memoryview

_SCOPE: ContextVar[Mapping[int, object] | None] = ContextVar("codec_contexts", default=None)
#: where a session's scope keeps the last hidden row (C,) float32 its streams decoded to: state
#: that a codec coding each token against the previous one reads (``tokenwise`` with
#: previous-token prediction) and whoever decodes the session's streams in order keeps
PREVIOUS_ROW = ("previous row", 0)
#: an id no item has (ids are never 0): a scope holding it for a kind (under the kind's
#: :meth:`ContextRegistry.scope_key`) holds every item of that kind its streams may name,
#: and those registered in the process are not looked at
SCOPE_ONLY = 0


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


def scope_items() -> list[tuple[object, object]]:
    """Every ``(key, item)`` in scope (none outside a :func:`context_scope`)."""
    scope = _SCOPE.get()
    return [] if scope is None else list(scope.items())


def scoped_context(key: int) -> object | None:
    """The context in scope under ``key``, else None."""
    scope = _SCOPE.get()
    return None if scope is None else scope.get(key)


def seal(out: bytearray) -> bytes:
    """A context's bytes: ``out`` (magic, version, body) and the CRC32 of it (u32 LE)."""
    out += struct.pack("<I", crc32(out))
    return bytes(out)


def unseal(data: BytesLike, magic: bytes, version: int | tuple[int, ...], min_size: int,
           what: str) -> tuple[memoryview, Reader]:
    """Check what :func:`seal` made: at least ``min_size`` bytes, ``magic``, the CRC32,
    ``version`` (or one of several); BitstreamError ("<what>: ...") if not. Returns the bytes
    and a reader of the body (from after the version to before the CRC)."""
    view = memoryview(data).cast("B")
    require(len(view) >= max(min_size, len(magic) + 5), f"{what}: truncated")
    require(bytes(view[: len(magic)]) == magic, f"{what}: bad magic")
    (crc,) = struct.unpack("<I", view[-4:])
    require(crc32(view[:-4]) == crc, f"{what}: CRC mismatch")
    r = Reader(view, len(magic), len(view) - 4)
    versions = version if isinstance(version, tuple) else (version,)
    require(r.u8() in versions, f"{what}: unsupported version")
    return view, r


class ContextRegistry(Generic[T]):
    """Items of one kind this process knows, each under the id of its bytes.

    ``kind`` names the items in messages ("tokenwise context"). An item's id is the first
    ``id_bits`` bits (little-endian) of the SHA-256 of its bytes, never 0 (0 means "none").
    ``item_type``: what :meth:`register` keeps; ``parse`` turns bytes into one (default
    ``item_type.from_bytes``, raising BitstreamError) and ``to_bytes`` back (default
    ``item_type.to_bytes``). At most ``max_items`` are kept (the attribute is the live bound):
    registering one more forgets the least recently used. ``scoped``: :meth:`find` looks in
    the :func:`context_scope` first, under :meth:`scope_key` (``scope_tag`` keeps one kind's
    keys apart from another's in a scope holding both). ``file_prefix`` and ``file_ext`` name files
    (``<prefix>-<id hex>.<ext>``, :meth:`save`); :meth:`load_file` reads at most
    ``max_file_bytes``; ``file_bytes`` and ``parse_file`` (default ``to_bytes`` and ``parse``)
    are a file's bytes and their parser, where a file holds more than the wire (what only the
    sender needs, kept out of the id). ``key_format`` formats ids in messages; ``hint`` ends
    the message of a missing item. The ids are part of the wire format: ``id_bits`` never
    changes for a kind.
    """

    def __init__(self, kind: str, item_type: type[T], *, id_bits: int = 20,
                 max_items: int = 64, parse: Callable[[BytesLike], T] | None = None,
                 to_bytes: Callable[[T], bytes] | None = None, scoped: bool = True,
                 file_prefix: str = "", file_ext: str = "", max_file_bytes: int = 1 << 26,
                 key_format: str = "d", hint: str = "", scope_tag: str = "",
                 file_bytes: Callable[[T], bytes] | None = None,
                 parse_file: Callable[[BytesLike], T] | None = None) -> None:
        if not 1 <= id_bits <= 256:
            raise ValueError("id_bits must be 1 .. 256")
        self.kind = kind
        self.item_type = item_type
        self.id_bits = id_bits
        self.max_items = max_items
        #: bytes -> item (BitstreamError if malformed), item -> bytes
        self.parse: Callable[[BytesLike], T] = parse or item_type.from_bytes
        self.to_bytes: Callable[[T], bytes] = to_bytes or item_type.to_bytes
        self.file_bytes: Callable[[T], bytes] = file_bytes or self.to_bytes
        self.parse_file: Callable[[BytesLike], T] = parse_file or self.parse
        self.scoped = scoped
        self.scope_tag = scope_tag
        self.file_prefix, self.file_ext = file_prefix or kind.split()[0], file_ext
        self.max_file_bytes = max_file_bytes
        self.key_format, self.hint = key_format, hint
        #: id -> item, least recently used first
        self._items: OrderedDict[int, T] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ContextRegistry({self.kind!r}, {len(self)}/{self.max_items} items)"

    # -- ids ---------------------------------------------------------------------------------
    def id_of_digest(self, digest: bytes) -> int:
        """The id of the bytes whose SHA-256 is ``digest``."""
        n = (self.id_bits + 7) // 8
        return (int.from_bytes(digest[:n], "little") & ((1 << self.id_bits) - 1)) or 1

    def id_of(self, data: BytesLike) -> int:
        """The id (never 0) of an item's bytes."""
        return self.id_of_digest(hashlib.sha256(data).digest())

    def key_of(self, item: T) -> int:
        """The id of ``item``."""
        return self.id_of(self.to_bytes(item))

    def _name(self, key: int) -> str:
        return f"{self.kind} {key:{self.key_format}}"

    # -- the registry ------------------------------------------------------------------------
    def register(self, item: T | BytesLike) -> int:
        """Make an item (or its bytes, parsed) known to this process; returns its id.

        Raises BitstreamError for malformed bytes, ValueError if another item has the id."""
        if not isinstance(item, self.item_type):
            item = self.parse(item)  # type: ignore[arg-type]
        data = self.to_bytes(item)  # type: ignore[arg-type]
        key = self.id_of(data)
        with self._lock:
            old = self._items.get(key)
            if old is not None and self.to_bytes(old) != data:
                raise ValueError(f"{self._name(key)}: another {self.kind} already has this id")
            richer = old is not None and len(self.file_bytes(item)) > len(data)  # type: ignore
            # the one held stays (its caches), unless this one carries the sender's extras
            self._items[key] = item if old is None or richer else old  # type: ignore
            self._items.move_to_end(key)
            while len(self._items) > max(self.max_items, 1):
                self._items.popitem(last=False)
        return key

    def get(self, key: int) -> T | None:
        """The item registered under ``key`` (its LRU place refreshed), else None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def scope_key(self, key: int) -> int | tuple[str, int]:
        """Where an item ``key`` sits in a :func:`context_scope` mapping."""
        return (self.scope_tag, key) if self.scope_tag else key

    def find(self, key: int) -> T | None:
        """The item ``key`` in scope (when ``scoped``), else the one registered (unless the
        scope holds :data:`SCOPE_ONLY` of this kind), else None."""
        if self.scoped:
            scope = _SCOPE.get()
            if scope is not None:
                hit = scope.get(self.scope_key(key))  # type: ignore[call-overload]
                if isinstance(hit, self.item_type):
                    return hit
                if self.scope_key(SCOPE_ONLY) in scope:
                    return None
        return self.get(key)

    def require(self, key: int) -> T:
        """The item ``key`` :meth:`find` finds; BitstreamError if there is none."""
        hit = self.find(key)
        if hit is None:
            raise BitstreamError(f"{self._name(key)}: not registered here{self.hint}")
        return hit

    def by_digest(self, digest: bytes) -> T | None:
        """The registered item whose bytes have the SHA-256 ``digest``, else None."""
        hit = self.get(self.id_of_digest(digest))
        if hit is None or hashlib.sha256(self.to_bytes(hit)).digest() != bytes(digest):
            return None  # another item under that id: not the one asked for
        return hit

    def remove(self, key: int) -> T | None:
        """Forget the item ``key``; returns it (None if there was none)."""
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def keys(self) -> list[int]:
        """The registered ids, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # -- files -------------------------------------------------------------------------------
    def filename(self, key: int) -> str:
        """``<prefix>-<id hex>.<ext>``: the name :meth:`save` gives the item ``key``."""
        return f"{self.file_prefix}-{key:0{(self.id_bits + 3) // 4}x}.{self.file_ext}"

    def save(self, item: T, directory: str | Path) -> Path:
        """Write ``item`` as :meth:`filename` in ``directory`` (for :meth:`load_file`)."""
        path = Path(directory) / self.filename(self.key_of(item))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.file_bytes(item))
        return path

    def load_file(self, path: str | Path) -> int:
        """Read an item's file (as :meth:`save` writes it; any name), register it and return
        its id. Raises OSError if the file cannot be read, BitstreamError if it does not parse
        (or is over ``max_file_bytes``), ValueError if another item is registered under its
        id."""
        with open(path, "rb") as f:
            data = f.read(self.max_file_bytes + 1)
        require(len(data) <= self.max_file_bytes, f"{self.kind} file {path}: too large")
        return self.register(self.parse_file(data))
