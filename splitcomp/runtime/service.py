"""What the server serves: the :class:`Service` interface, one request path for every kind.

A service is a named unit of work behind the transport: a vision tail
(:class:`~splitcomp.runtime.deployment.Deployment`) or a split LLM's server half
(:class:`~splitcomp.runtime.llm.LLMDeployment`). The server never looks inside a request
beyond what a service tells it; each request goes through the same steps::

    frame --parse--> request --route--> service --admit (event loop)--> answer now
                                                                   \\--> Work, queued
    batch of Work --run (worker thread)--> BatchResult --settle (event loop)--> answers

:mod:`.admission` decides whether a request may queue, :mod:`.scheduling` batches and runs the
queued work, :mod:`.server` carries the bytes. A new kind of work is a new ``Service``
subclass (with its frame type in ``docs/protocol.md``), not a second request path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import codecs as _codecs
from ..codecs import DecodeLimits, Header
from .errors import RequestError
from .protocol import ErrorCode, check_name, frame_type

#: what :meth:`Service.admit` calls right before it commits to queueing a request (raises
#: ``RequestError(OVERLOADED)`` when the service's queue is full)
QueueCheck = Callable[[], None]


@dataclass(eq=False, slots=True)
class Work:
    """One admitted request waiting for its batch. ``payload`` is whatever the service's
    :meth:`Service.admit` returned for it (a bitstream, a parsed step with its session)."""

    request_id: int
    payload: Any
    key: Hashable  #: dedup key
    inflight_key: Hashable  #: whose in-flight limit it counts against
    arrival: float  #: time.perf_counter() when its frame was parsed


@dataclass
class BatchResult:
    """What :meth:`Service.run` did with one batch: one answer frame per item (result or typed
    error), the error codes (None: answered with a result) and time accounting (seconds, wall
    unless ``cpu``)."""

    frames: list[bytes]
    errors: list[ErrorCode | None]
    tail_calls: list[int] = field(default_factory=list)  #: samples per tail call
    decode_s: float = 0.0
    decode_cpu_s: float = 0.0
    tail_s: float = 0.0
    tail_cpu_s: float = 0.0
    encode_s: float = 0.0  #: building the answers (stacking, splitting, encoding, sampling)
    worker_cpu_s: float = 0.0  #: the worker thread's CPU over the whole batch
    tokens: int = 0  #: tokens run through the tail (LLM services)


class Service(abc.ABC):
    """A named unit of work the server batches and runs; see the module docstring.

    Subclasses set ``frame_type`` (the request frame type they take) and ``unit`` (what a
    queued item is called in messages), and the attributes ``name``, ``max_batch_size``,
    ``max_wait_ms`` and ``allowed_clients`` (client ids, None: all), usually through
    :meth:`__init__`. Every method except :meth:`run` is called on the server's event loop;
    :meth:`run` on the service's own worker thread, one batch at a time.
    """

    frame_type: ClassVar[int]
    unit: ClassVar[str] = "requests"

    name: str
    max_batch_size: int
    max_wait_ms: float
    allowed_clients: frozenset[str] | None
    codecs: frozenset[str] | None = None
    limits: DecodeLimits = _codecs.DEFAULT_LIMITS

    def __init__(self, name: str, *, codecs: Iterable[str] | None = None,
                 limits: DecodeLimits | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, allowed_clients: Iterable[str] | None = None
                 ) -> None:
        """What every service has: a wire-safe ``name``, the codecs whose bitstreams it
        accepts (None: any registered; an unknown name raises KeyError), decode ``limits``
        per bitstream, its batching and the clients allowed to use it (None: all)."""
        check_name(name)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.name = name
        self.codecs = frozenset(codecs) if codecs is not None else None
        for c in self.codecs or ():
            _codecs.codec_class(c)
        self.limits = limits or _codecs.DEFAULT_LIMITS
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.allowed_clients = frozenset(allowed_clients) if allowed_clients is not None else None

    def check_codec(self, header: Header) -> None:
        """Refuse (``CODEC_NOT_ALLOWED``) a bitstream whose codec is not in :attr:`codecs`,
        from its header, before any payload is decoded."""
        if self.codecs is not None and header.codec_name not in self.codecs:
            raise RequestError(ErrorCode.CODEC_NOT_ALLOWED,
                               f"codec {header.codec_name!r} not accepted by {self.name!r} "
                               f"(accepts {', '.join(sorted(self.codecs))})")

    # -- routing (class level: before a service is known) -------------------------------
    @staticmethod
    @abc.abstractmethod
    def parse(frame: bytes | memoryview) -> Any:
        """The request in ``frame`` (an object with ``request_id``); raises
        :class:`~.protocol.FrameError`."""

    @classmethod
    @abc.abstractmethod
    def route(cls, request: Any, services: Sequence[Service]) -> Service | RequestError:
        """The service of this kind that takes ``request``, or the error to answer."""

    @classmethod
    @abc.abstractmethod
    def dedup_scope(cls, request: Any) -> Hashable:
        """The part of the dedup key that names where a request went (with the client's
        identity and the request id it makes the key)."""

    # -- one request ---------------------------------------------------------------------
    @abc.abstractmethod
    def admit(self, client_id: str, request: Any, check_queue: QueueCheck) -> Any:
        """Accept ``request`` from ``client_id``: returns ``bytes`` (an answer frame, sent at
        once) or a payload of any other type to queue (after calling ``check_queue``; it
        reaches :meth:`run` as ``Work.payload``); raises :class:`RequestError`."""

    def settle(self, work: Work, ok: bool) -> None:  # noqa: B027 - optional hook
        """``work`` was answered (``ok``: with a result), timed out or dropped."""

    # -- batches -------------------------------------------------------------------------
    @abc.abstractmethod
    def run(self, batch: Sequence[Work], start: float) -> BatchResult:
        """Run one batch (worker thread); ``start`` is when the batch began
        (time.perf_counter()). Never raises for a bad request: each gets its own error."""

    # -- upkeep --------------------------------------------------------------------------
    def attach(self, registry: Any) -> None:  # noqa: B027 - optional hook
        """Register this service's own metrics in the server's metric registry."""

    def update_metrics(self, result: BatchResult | None = None) -> None:  # noqa: B027
        """Refresh this service's gauges (after an admission or a batch ``result``)."""

    def upkeep_period_s(self) -> float | None:
        """How often :meth:`upkeep` should run (None: never)."""
        return None

    def upkeep(self) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping on the event loop (e.g. expiring idle sessions)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The server stopped: free what the service holds."""


#: request frame type -> the Service subclass that takes it (filled by :func:`register_service`)
SERVICE_KINDS: dict[int, type[Service]] = {}


def register_service(cls: type[Service]) -> type[Service]:
    """Class decorator: ``cls`` takes the request frames of type ``cls.frame_type``."""
    if SERVICE_KINDS.get(cls.frame_type, cls) is not cls:
        raise ValueError(f"frame type {cls.frame_type:#x} is taken by "
                         f"{SERVICE_KINDS[cls.frame_type].__name__}")
    SERVICE_KINDS[cls.frame_type] = cls
    return cls


def kind_of(frame: bytes | memoryview, default: int) -> type[Service]:
    """The service kind for ``frame`` (by its type byte); the ``default`` type's kind for an
    unknown or missing type (its parser then answers the frame with a typed error)."""
    kind = SERVICE_KINDS.get(frame_type(frame))  # type: ignore[arg-type]
    return kind if kind is not None else SERVICE_KINDS[default]
