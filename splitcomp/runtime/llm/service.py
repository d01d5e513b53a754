"""An LLM deployment: a :class:`ServerHalf` served under a name, with its sessions (the LLM
:class:`~splitcomp.runtime.service.Service`).

The server's event loop opens, closes and looks up sessions (:class:`SessionManager`) and
queues STEP requests (:meth:`LLMDeployment.admit`); a worker thread runs
:meth:`LLMDeployment.run_steps` on each batch:
decode every bitstream, run the prefills one by one and all single-token steps as ONE tail
forward (continuous batching, :meth:`ServerHalf.step_batch`), pick each session's next token
(:mod:`.sampling`) and build the answer frames. Like :meth:`Deployment.run_batch` it never
raises for a bad request: each gets its own error frame.

What a STEP may cost is bounded before any work: the event loop refuses more tokens than
``max_step_tokens`` and more tokens than the frame's bytes could plausibly carry
(``min_step_bytes_per_token``); the worker reads every bitstream's header (codec, dtype,
shape) and checks the shapes add up to exactly the declared tokens at the model's hidden size
before it decodes any payload. A sampled token is drawn from a generator seeded by the
session's seed and the token's position, so a session rebuilt by replaying its steps
(after a server restart, ``docs/protocol.md``) draws what the lost one would have.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ... import codecs as _codecs
from ...codecs import BitstreamError, DecodeLimits, Header
from ...codecs.compact import scope_key
from ...codecs.container import learn_template
from ...codecs.contexts import PREVIOUS_ROW, SCOPE_ONLY
from ...codecs.registry import codec_class_by_id
from ...llm.halves import ServerHalf
from ...llm.hidden_wire import decode_in_session
from ...llm.sampling import pick
from .. import protocol as P
from ..device import OnDevice, resolve_device
from ..errors import RequestError
from ..protocol import ErrorCode
from ..service import BatchResult, QueueCheck, Service, Work, register_service
from ..stats import Counter, Gauge, Registry
from .contexts import MAX_CONTEXT_BYTES, ContextStore
from .sessions import ANONYMOUS, ServerSession, SessionManager, client_share

#: a step's saved previous row before it decodes (None is a value: no previous row)
_UNTOUCHED = object()
#: compact-stream templates a session may teach (one per codec parameters and shape it sends
#: per token: a few; each ~20 bytes)
SESSION_TEMPLATES = 16

_MASK64 = (1 << 64) - 1


def position_seed(seed: int, position: int) -> int:
    """The generator seed of a sampled session's token at ``position`` (splitmix64 of the
    session's seed and the position): a token's draw depends on nothing the session did
    before, so replaying a session's steps reproduces its samples."""
    z = (seed + (position + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def _per_client(value: int | None, cap: int | None) -> int | None:
    """A per-client cap: None -> the default share of the global ``cap``; 0 -> none."""
    if value is None:
        return client_share(cap)
    return value or None


@dataclass
class StepItem:
    """One queued STEP: its session, the token count it declared and its bitstreams."""

    request_id: int
    session: ServerSession
    tokens: int
    bitstreams: Sequence[bytes | memoryview]
    queue_s: float = 0.0
    #: the session's previous decoded row before this step decoded (restored if it fails)
    saved_row: object = field(default=_UNTOUCHED, repr=False)

    def restore_row(self) -> None:
        """Put back the session's previous decoded row: the step failed, and its tokens
        never happened (``PREVIOUS_ROW``: :mod:`splitcomp.codecs._tokenwise_temporal`)."""
        if self.saved_row is not _UNTOUCHED:
            scope = self.session.contexts
            scope.pop(PREVIOUS_ROW, None)
            if self.saved_row is not None:
                scope[PREVIOUS_ROW] = self.saved_row
            self.saved_row = _UNTOUCHED


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
        self.quota_refusals = r.add(Gauge("splitcomp_llm_quota_refusals_total",
                                          "OPENs and STEPs refused by a per-client cap "
                                          "(sessions, KV bytes, codec contexts).", d,
                                          kind="counter"))

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
    one STEP may carry. ``min_step_bytes_per_token``: a STEP's bitstreams must hold at least
    this many bytes per declared token (``BAD_BITSTREAM`` otherwise; real hidden states take
    50-2400 bytes a token, a constant one a few bytes for any length): a small frame cannot
    ask for a long prefill. ``allowed_clients``: client ids allowed (None: all).
    ``max_context_bytes``, ``max_contexts``, ``local_contexts``: the codec contexts clients
    may send at OPEN, and whether this process's own are used too
    (:class:`~splitcomp.runtime.llm.contexts.ContextStore`).
    ``max_sessions_per_client``, ``max_kv_bytes_per_client``, ``max_contexts_per_client``:
    each client's share of those caps (None: a quarter of the global one, :data:`CLIENT_SHARE`;
    0: no per-client cap). A client is the token's client id; a server without tokens has one
    id for all (``anonymous``), which gets no per-client cap unless the caller of
    :meth:`admit` passes a ``quota_key`` (the connection).
    ``device``: where the server half runs (``cpu``, ``cuda``, ``auto``;
    :func:`~splitcomp.runtime.device.resolve_device`). Off the CPU its blocks and the KV
    caches live on the GPU; hidden states go there through pinned memory and the logits
    come back for sampling (:class:`~splitcomp.runtime.device.OnDevice` around ``server.part``).
    ``server`` may come from a model holding only its side (the rest on ``meta``,
    :func:`~splitcomp.llm.partial.partial_model`). ``held_bytes``, ``model_bytes``: parameter
    bytes held here (default: ``server.part``'s) and the whole model's, shown in the ``repr``.
    """

    def __init__(self, name: str, server: ServerHalf, *, codecs: Iterable[str] | None = None,
                 limits: DecodeLimits | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_kv_bytes: int | None = None,
                 idle_timeout_s: float = 300.0, max_sessions: int = 4096,
                 max_step_tokens: int = 4096, min_step_bytes_per_token: int = 8,
                 allowed_clients: Iterable[str] | None = None,
                 max_context_bytes: int = MAX_CONTEXT_BYTES, max_contexts: int = 64,
                 local_contexts: bool = True, max_sessions_per_client: int | None = None,
                 max_kv_bytes_per_client: int | None = None,
                 max_contexts_per_client: int | None = None,
                 device: str | torch.device | None = "cpu", held_bytes: int | None = None,
                 model_bytes: int | None = None) -> None:
        super().__init__(name, codecs=codecs, limits=limits, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, allowed_clients=allowed_clients)
        self.device = resolve_device(device)
        if not 0 < max_step_tokens <= 0xFFFF or min_step_bytes_per_token < 0:
            raise ValueError("max_step_tokens must be 1..65535, min_step_bytes_per_token >= 0")
        missing = [n for n, p in server.part.named_parameters() if p.is_meta]
        if missing:  # a partially loaded model of the other side, or cut elsewhere
            raise ValueError(f"the server side (blocks [{server.split}, L), norm, head) is not "
                             f"loaded: {missing[0]} and {len(missing) - 1} more on meta")
        self.server = server
        self.held_bytes = held_bytes if held_bytes is not None else sum(
            p.numel() * p.element_size() for p in server.part.parameters() if not p.is_meta)
        self.model_bytes = model_bytes
        self.max_step_tokens = max_step_tokens
        self.min_step_bytes_per_token = min_step_bytes_per_token
        self.sessions = SessionManager(
            server, max_kv_bytes, idle_timeout_s, max_sessions,
            max_sessions_per_client=_per_client(max_sessions_per_client, max_sessions),
            max_kv_bytes_per_client=_per_client(max_kv_bytes_per_client, max_kv_bytes),
            max_contexts_per_client=_per_client(max_contexts_per_client, max_contexts))
        self.contexts = ContextStore(max_context_bytes, max_contexts, local_contexts)
        h = server.hidden_size  # a step's bitstream headers are parsed within these bounds
        self._step_limits = DecodeLimits(min(self.limits.max_elements, max_step_tokens * h),
                                         self.limits.max_tensors, self.limits.max_ndim,
                                         self.limits.max_bytes)
        self.vocab_size = int(server.part.lm_head.out_features) if hasattr(
            server.part, "lm_head") else 0
        if self.device.type != "cpu" and not isinstance(server.part, OnDevice):
            server.part = OnDevice(server.part, self.device)

    frame_type = P.TYPE_LLM_REQUEST
    unit = "steps"
    _metrics: _LLMMetrics | None = None

    def __repr__(self) -> str:
        cap = self.sessions.max_kv_bytes
        return (f"LLMDeployment({self.name!r}, split={self.server.split}/"
                f"{self.server.num_layers}, max_batch_size={self.max_batch_size}, "
                f"max_wait_ms={self.max_wait_ms}, max_kv_bytes={cap if cap else 'none'}, "
                f"idle_timeout_s={self.sessions.idle_timeout_s}, "
                f"codecs={sorted(self.codecs or []) or 'any'}, "
                f"params={self.held_bytes / 1e6:.1f} MB"
                + (f" of {self.model_bytes / 1e6:.1f} MB" if self.model_bytes else "") + ")")

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

    def admit(self, client_id: str, request: P.LLMRequest, check_queue: QueueCheck,
              quota_key: Hashable | None = None
              ) -> bytes | tuple[P.LLMRequest, ServerSession]:
        """OPEN and CLOSE are answered at once; a STEP is checked against its session (owner,
        size, KV-cache caps) and its tokens reserved before it queues. ``quota_key``: whose
        per-client caps a new session counts against (default: ``client_id``, none for the
        anonymous client of a server without tokens)."""
        rid = request.request_id
        if request.op is P.LLMOp.OPEN:
            if quota_key is None and client_id != ANONYMOUS:
                quota_key = client_id
            return P.encode_llm_opened(rid, self.opened(self.open(client_id, request,
                                                                  quota_key)))
        if request.op is P.LLMOp.CLOSE:
            return P.encode_llm_closed(rid, self.sessions.close(client_id, request.session))
        session = self.sessions.get(client_id, request.session)
        self.check_step(request)
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
        m.quota_refusals.set(sm.refused_by_quota, labels)

    def upkeep_period_s(self) -> float:
        """A quarter of the idle timeout (between 10 ms and 1 s)."""
        return min(max(self.sessions.idle_timeout_s / 4, 0.01), 1.0)

    def upkeep(self) -> None:
        self.sessions.expire()
        self.update_metrics()

    def close(self) -> None:
        self.sessions.close_all()

    def check_step(self, request: P.LLMRequest) -> None:
        """What a STEP frame may ask for, from its frame alone (event loop, no decoding): at
        most ``max_step_tokens`` tokens (``TOO_LARGE``), at most one bitstream per token
        (the parser's rule) and bytes enough for its tokens (``BAD_BITSTREAM``)."""
        tokens = request.tokens
        if tokens > self.max_step_tokens:
            raise RequestError(ErrorCode.TOO_LARGE, f"{tokens} tokens in one step "
                               f"(limit {self.max_step_tokens})")
        if len(request.bitstreams) > tokens:
            raise RequestError(ErrorCode.BAD_FRAME, f"{len(request.bitstreams)} bitstreams "
                               f"for {tokens} tokens")
        size = sum(len(b) for b in request.bitstreams)
        if size < tokens * self.min_step_bytes_per_token:
            raise RequestError(ErrorCode.BAD_BITSTREAM, f"{size} bytes of bitstreams cannot "
                               f"carry {tokens} tokens (at least "
                               f"{self.min_step_bytes_per_token} bytes a token)")

    # -- sessions --------------------------------------------------------------------
    def open(self, owner: str, request: P.LLMRequest,
             quota_key: Hashable | None = None) -> ServerSession:
        """A session for an OPEN request, with the codec context it names (checked against
        the client's context quota first, then kept by :attr:`contexts`); raises
        :class:`RequestError`."""
        contexts, ids = {}, ()
        if request.context is not None:
            ref = request.context
            cls = codec_class_by_id(ref.codec_id)
            if self.codecs is not None and (cls is None or cls.name not in self.codecs):
                raise RequestError(ErrorCode.CODEC_NOT_ALLOWED, f"{self.name!r} does not "
                                   f"accept codec id {ref.codec_id}'s contexts")
            ids = ((ref.codec_id, bytes(ref.digest)),)
            self.sessions.check_contexts(quota_key, ids)
            contexts = self.contexts.resolve(ref)
        # compact templates: only those the session's own streams taught (none from the process)
        contexts = {**contexts, scope_key(SCOPE_ONLY): True}
        return self.sessions.open(owner, request.sampling, contexts, client=quota_key,
                                  context_ids=ids)

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

    def step_shapes(self, item: StepItem) -> list[int]:
        """The tokens each bitstream of a STEP carries, from the headers alone (CRC, codec,
        one float tensor (1, t, H), t >= 1), checked to add up to the declared tokens before
        any payload is decoded; raises :class:`RequestError`."""
        left, counts = item.tokens, []
        try:
            for blob in item.bitstreams:
                header = _codecs.peek(blob, self._step_limits, item.session.contexts)
                self._check_header(header)
                self._learn_template(item.session, blob)
                t = header.tensors[0].shape[1]
                if not 0 < t <= left:
                    raise RequestError(ErrorCode.BAD_INPUT, f"the frame declares "
                                       f"{item.tokens} tokens, its bitstreams carry more "
                                       f"(or an empty one)")
                left -= t
                counts.append(t)
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None
        if left:
            raise RequestError(ErrorCode.BAD_INPUT, f"the frame declares {item.tokens} tokens, "
                               f"its bitstreams carry {item.tokens - left}")
        return counts

    def _learn_template(self, session: ServerSession, blob: bytes | memoryview) -> None:
        """A full stream's template joins its session's (up to :data:`SESSION_TEMPLATES`):
        the session's later streams of that codec, parameters and shape may be compact
        (``docs/protocol.md``, "Compact steps"); no other session sees it."""
        if session.templates < SESSION_TEMPLATES and learn_template(
                session.contexts, blob, self._step_limits):
            session.templates += 1

    def decode(self, item: StepItem) -> torch.Tensor:
        """The hidden states (1, T, H) of one STEP, its headers checked first
        (:meth:`step_shapes`); raises :class:`RequestError`. Each stream's last row becomes
        the session's previous row (``PREVIOUS_ROW``) for the next, as the edge coded them;
        :meth:`StepItem.restore_row` undoes that if the step fails."""
        counts = self.step_shapes(item)
        item.saved_row = item.session.contexts.get(PREVIOUS_ROW)
        try:
            if len(counts) == 1:
                hidden = self._decode_one(item, item.bitstreams[0]).float()
            else:  # written in place: no list of parts and no concatenated copy
                hidden = torch.empty(1, item.tokens, self.server.hidden_size)
                pos = 0
                for blob, t in zip(item.bitstreams, counts, strict=True):
                    hidden[:, pos : pos + t] = self._decode_one(item, blob)
                    pos += t
        except BaseException:
            item.restore_row()
            raise
        if hidden.shape[1] != item.tokens:  # pragma: no cover - the headers said otherwise
            raise RequestError(ErrorCode.BAD_INPUT, f"the frame declares {item.tokens} tokens, "
                               f"its bitstreams carry {hidden.shape[1]}")
        return hidden

    def _decode_one(self, item: StepItem, blob: bytes | memoryview) -> torch.Tensor:
        try:
            return decode_in_session(blob, item.session.contexts, self._step_limits,
                                     self._check_header)
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None

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
            if s.generator is not None:
                s.generator.manual_seed(position_seed(s.sampling.seed, s.position))
            token, logprob, top = pick(lg[0, -1], s.sampling, s.generator)
            report.frames[i] = P.encode_llm_token(
                it.request_id, token, logprob, s.position, top, batch_size=len(call),
                queue_s=it.queue_s, decode_s=decode_s[i], tail_s=tail_s)
            report.errors[i] = None
            report.tokens += it.tokens
        report.encode_s += time.thread_time() - c1

    @staticmethod
    def _fail(report: BatchResult, i: int, it: StepItem, code: ErrorCode, message: str) -> None:
        it.restore_row()  # the step did not happen: nor did its rows
        report.frames[i] = P.encode_error(it.request_id, code, message)
        report.errors[i] = code
