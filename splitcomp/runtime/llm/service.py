"""An LLM deployment: a :class:`ServerHalf` served under a name, with its sessions (the LLM
:class:`~splitcomp.runtime.service.Service`).

The server's event loop opens, closes and looks up sessions (:class:`SessionManager`) and
queues STEP requests (:meth:`LLMDeployment.admit`); a worker thread runs
:meth:`LLMDeployment.run_steps` on each batch:
decode every bitstream, run the prefills one by one and all single-token steps as ONE tail
forward (continuous batching, :meth:`ServerHalf.step_batch`), pick each session's next token
(:mod:`.sampling`) and build the answer frames. Like :meth:`Deployment.run_batch` it never
raises for a bad request: each gets its own error frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ... import codecs as _codecs
from ...codecs import BitstreamError, DecodeLimits, Header
from ...codecs.registry import codec_class_by_id
from ...llm.halves import ServerHalf
from ...llm.sampling import pick
from .. import protocol as P
from ..errors import RequestError
from ..protocol import ErrorCode
from ..service import BatchResult, QueueCheck, Service, Work, register_service
from ..stats import Counter, Gauge, Registry
from .contexts import ContextStore
from .sessions import ServerSession, SessionManager


@dataclass
class StepItem:
    """One queued STEP: its session, the token count it declared and its bitstreams."""

    request_id: int
    session: ServerSession
    tokens: int
    bitstreams: Sequence[bytes | memoryview]
    queue_s: float = 0.0


class _LLMMetrics:
    """The LLM gauges and counters of one metric registry, shared by its LLM deployments."""

    def __init__(self, r: Registry) -> None:
        d = ("deployment",)
        self.sessions = r.add(Gauge("splitcomp_llm_sessions", "Open LLM sessions.", d))
        self.kv = r.add(Gauge("splitcomp_llm_kv_bytes", "KV-cache bytes of the LLM sessions "
                              "(reserved: steps in flight included).", d))
        self.opened = r.add(Gauge("splitcomp_llm_sessions_opened_total",
                                  "LLM sessions opened.", d, kind="counter"))
        self.expired = r.add(Gauge("splitcomp_llm_sessions_expired_total",
                                   "LLM sessions freed by the idle timeout.", d, kind="counter"))
        self.tokens = r.add(Counter("splitcomp_llm_tokens_total",
                                    "Tokens run through the tail (prefills and steps).", d))
        self.sample_cpu = r.add(Counter(
            "splitcomp_llm_sample_cpu_seconds_total",
            "CPU of the worker thread picking next tokens and building answers.", d))
        self.contexts = r.add(Gauge("splitcomp_llm_codec_contexts", "Codec contexts held "
                                    "(in use by sessions or kept for reuse).", d))
        self.context_bytes = r.add(Gauge("splitcomp_llm_codec_context_bytes_total",
                                         "Codec context bytes accepted from clients at OPEN.",
                                         d, kind="counter"))

    @classmethod
    def of(cls, registry: Registry) -> _LLMMetrics:
        held = getattr(registry, "_llm_metrics", None)
        if held is None:
            held = cls(registry)
            registry._llm_metrics = held  # type: ignore[attr-defined]
        return held


@register_service
class LLMDeployment(Service):
    """A server half under a name, its sessions and its acceptance rules.

    ``codecs``: accepted codec names (None: any). ``max_kv_bytes``, ``idle_timeout_s``,
    ``max_sessions``: see :class:`SessionManager`. ``max_step_tokens``: the longest prefill
    one STEP may carry. ``allowed_clients``: client ids allowed (None: all).
    ``max_context_bytes``, ``max_contexts``, ``local_contexts``: the codec contexts clients
    may send at OPEN, and whether this process's own are used too
    (:class:`~splitcomp.runtime.llm.contexts.ContextStore`).
    """

    def __init__(self, name: str, server: ServerHalf, *, codecs: Iterable[str] | None = None,
                 limits: DecodeLimits | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_kv_bytes: int | None = None,
                 idle_timeout_s: float = 300.0, max_sessions: int = 4096,
                 max_step_tokens: int = 4096,
                 allowed_clients: Iterable[str] | None = None,
                 max_context_bytes: int = 1 << 20, max_contexts: int = 64,
                 local_contexts: bool = True) -> None:
        super().__init__(name, codecs=codecs, limits=limits, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, allowed_clients=allowed_clients)
        self.server = server
        self.max_step_tokens = max_step_tokens
        self.sessions = SessionManager(server, max_kv_bytes, idle_timeout_s, max_sessions)
        self.contexts = ContextStore(max_context_bytes, max_contexts, local_contexts)
        self.vocab_size = int(server.part.lm_head.out_features) if hasattr(
            server.part, "lm_head") else 0

    frame_type = P.TYPE_LLM_REQUEST
    unit = "steps"
    _metrics: _LLMMetrics | None = None

    def __repr__(self) -> str:
        cap = self.sessions.max_kv_bytes
        return (f"LLMDeployment({self.name!r}, split={self.server.split}/"
                f"{self.server.num_layers}, max_batch_size={self.max_batch_size}, "
                f"max_wait_ms={self.max_wait_ms}, max_kv_bytes={cap if cap else 'none'}, "
                f"idle_timeout_s={self.sessions.idle_timeout_s}, "
                f"codecs={sorted(self.codecs or []) or 'any'})")

    # -- the Service interface (event loop) -------------------------------------------
    parse = staticmethod(P.parse_llm_request)

    @classmethod
    def route(cls, request: P.LLMRequest, services: Sequence[Service]
              ) -> Service | RequestError:
        """OPEN goes to the deployment it names; STEP and CLOSE to the one holding the session."""
        if request.op is P.LLMOp.OPEN:
            for s in services:
                if s.name == request.deployment:
                    return s
            return RequestError(ErrorCode.UNKNOWN_DEPLOYMENT,
                                f"no LLM deployment {request.deployment!r} (serving "
                                f"{', '.join(s.name for s in services) or 'none'})")
        for s in services:
            if isinstance(s, LLMDeployment) and request.session in s.sessions:
                return s
        return RequestError(ErrorCode.SESSION_NOT_FOUND, "no such session for this client "
                            "(never opened, closed, or expired)")

    @classmethod
    def dedup_scope(cls, request: P.LLMRequest) -> str:
        return "llm"

    def admit(self, client_id: str, request: P.LLMRequest, check_queue: QueueCheck
              ) -> bytes | tuple[P.LLMRequest, ServerSession]:
        """OPEN and CLOSE are answered at once; a STEP is checked against its session (owner,
        size, KV-cache cap) and its tokens reserved before it queues."""
        rid = request.request_id
        if request.op is P.LLMOp.OPEN:
            return P.encode_llm_opened(rid, self.opened(self.open(client_id, request)))
        if request.op is P.LLMOp.CLOSE:
            return P.encode_llm_closed(rid, self.sessions.close(client_id, request.session))
        session = self.sessions.get(client_id, request.session)
        if request.tokens > self.max_step_tokens:
            raise RequestError(ErrorCode.TOO_LARGE, f"{request.tokens} tokens in one step "
                               f"(limit {self.max_step_tokens})")
        check_queue()
        self.sessions.reserve(session, request.tokens)
        return request, session

    def settle(self, work: Work, ok: bool) -> None:
        request, session = work.payload
        self.sessions.finish(session, request.tokens, ok)

    def run(self, batch: Sequence[Work], start: float) -> BatchResult:
        return self.run_steps([StepItem(w.request_id, w.payload[1], w.payload[0].tokens,
                                        w.payload[0].bitstreams, start - w.arrival)
                               for w in batch])

    def attach(self, registry: Registry) -> None:
        self._metrics = _LLMMetrics.of(registry)

    def update_metrics(self, result: BatchResult | None = None) -> None:
        m, sm, labels = self._metrics, self.sessions, (self.name,)
        if m is None:
            return
        if result is not None:
            m.sample_cpu.inc(labels, result.encode_s)
            m.tokens.inc(labels, result.tokens)
        m.sessions.set(len(sm), labels)
        m.kv.set(sm.reserved_bytes, labels)
        m.opened.set(sm.opened, labels)
        m.expired.set(sm.expired, labels)
        m.contexts.set(len(self.contexts), labels)
        m.context_bytes.set(self.contexts.upload_bytes, labels)

    def upkeep_period_s(self) -> float:
        """A quarter of the idle timeout (between 10 ms and 1 s)."""
        return min(max(self.sessions.idle_timeout_s / 4, 0.01), 1.0)

    def upkeep(self) -> None:
        self.sessions.expire()
        self.update_metrics()

    def close(self) -> None:
        self.sessions.close_all()

    # -- sessions --------------------------------------------------------------------
    def open(self, owner: str, request: P.LLMRequest) -> ServerSession:
        """A session for an OPEN request, with the codec context it names (checked, and kept
        by :attr:`contexts`); raises :class:`RequestError`."""
        contexts = {}
        if request.context is not None:
            cls = codec_class_by_id(request.context.codec_id)
            if self.codecs is not None and (cls is None or cls.name not in self.codecs):
                raise RequestError(ErrorCode.CODEC_NOT_ALLOWED, f"{self.name!r} does not "
                                   f"accept codec id {request.context.codec_id}'s contexts")
            contexts = self.contexts.resolve(request.context)
        return self.sessions.open(owner, request.sampling, contexts)

    def opened(self, session: ServerSession) -> P.LLMOpened:
        """The OPEN answer for ``session``."""
        s = self.server
        return P.LLMOpened(session.id, s.split, s.hidden_size, self.vocab_size,
                           s.kv_bytes_per_token)

    # -- worker thread -----------------------------------------------------------------
    def _check_header(self, header: Header) -> None:
        self.check_codec(header)
        h = self.server.hidden_size
        if len(header.tensors) != 1 or not header.tensors[0].dtype.is_floating_point or (
                len(header.tensors[0].shape) != 3 or header.tensors[0].shape[0] != 1
                or header.tensors[0].shape[2] != h):
            shapes = [tuple(t.shape) for t in header.tensors]
            raise RequestError(ErrorCode.BAD_INPUT, f"expected one float tensor (1, T, {h}), "
                               f"got {shapes}")

    def decode(self, item: StepItem) -> torch.Tensor:
        """The hidden states (1, T, H) of one STEP; raises :class:`RequestError`."""
        parts = []
        try:
            for blob in item.bitstreams:
                (t,) = _codecs.decode(blob, self.limits, check=self._check_header,
                                      contexts=item.session.contexts)
                parts.append(t.float())
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if hidden.shape[1] != item.tokens:
            raise RequestError(ErrorCode.BAD_INPUT, f"the frame declares {item.tokens} tokens, "
                               f"its bitstreams carry {hidden.shape[1]}")
        return hidden

    def run_steps(self, items: Sequence[StepItem]) -> BatchResult:
        """Decode, run (prefills alone, single-token steps in one forward), pick the next
        tokens, build the answers. A failed step leaves its session as it was."""
        c0 = time.thread_time()
        n = len(items)
        report = BatchResult([b""] * n, [ErrorCode.INTERNAL] * n)
        hiddens: list[torch.Tensor | None] = [None] * n
        decode_s = [0.0] * n
        for i, it in enumerate(items):
            t0 = time.perf_counter()
            try:
                hiddens[i] = self.decode(it)
            except RequestError as e:
                self._fail(report, i, it, e.code, e.message)
            except Exception as e:  # a codec bug must not take the batch down
                self._fail(report, i, it, ErrorCode.INTERNAL, f"decode failed: {e!r}"[:300])
            decode_s[i] = time.perf_counter() - t0
        report.decode_s = sum(decode_s)
        report.decode_cpu_s = time.thread_time() - c0
        single = [i for i in range(n) if hiddens[i] is not None and hiddens[i].shape[1] == 1]
        for i in range(n):
            if hiddens[i] is not None and hiddens[i].shape[1] > 1:
                self._forward(report, items, hiddens, [i], decode_s)
        if single:
            self._forward(report, items, hiddens, single, decode_s)
        report.worker_cpu_s = time.thread_time() - c0
        return report

    def _forward(self, report: BatchResult, items: Sequence[StepItem],
                 hiddens: list[torch.Tensor | None], call: list[int],
                 decode_s: list[float]) -> None:
        tails = [items[i].session.tail for i in call]
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            if len(call) == 1:
                logits = [self.server.step(tails[0], hiddens[call[0]], last_only=True)]
            else:
                logits = self.server.step_batch(tails, [hiddens[i] for i in call])
            error = None
        except Exception as e:  # every session of the call is as it was
            error = e
        tail_s = time.perf_counter() - t0
        report.tail_cpu_s += time.thread_time() - c0
        report.tail_s += tail_s
        if error is not None:
            if len(call) > 1:  # find the step that breaks the forward: run each alone
                for i in call:
                    self._forward(report, items, hiddens, [i], decode_s)
                return
            self._fail(report, call[0], items[call[0]], ErrorCode.INTERNAL,
                       f"tail failed: {error!r}"[:300])
            return
        report.tail_calls.append(len(call))
        c1 = time.thread_time()
        for i, lg in zip(call, logits, strict=True):
            it = items[i]
            s = it.session
            token, logprob, top = pick(lg[0, -1], s.sampling, s.generator)
            report.frames[i] = P.encode_llm_token(
                it.request_id, token, logprob, s.position, top, batch_size=len(call),
                queue_s=it.queue_s, decode_s=decode_s[i], tail_s=tail_s)
            report.errors[i] = None
            report.tokens += it.tokens
        report.encode_s += time.thread_time() - c1

    @staticmethod
    def _fail(report: BatchResult, i: int, it: StepItem, code: ErrorCode, message: str) -> None:
        report.frames[i] = P.encode_error(it.request_id, code, message)
        report.errors[i] = code
