"""An LLM deployment: a :class:`ServerHalf` served under a name, with its sessions.

The server's event loop opens, closes and looks up sessions (:class:`SessionManager`) and
queues STEP requests; a worker thread runs :meth:`LLMDeployment.run_steps` on each batch:
decode every bitstream, run the prefills one by one and all single-token steps as ONE tail
forward (continuous batching, :meth:`ServerHalf.step_batch`), pick each session's next token
(:mod:`.sampling`) and build the answer frames. Like :meth:`Deployment.run_batch` it never
raises for a bad request: each gets its own error frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ... import codecs as _codecs
from ...codecs import BitstreamError, DecodeLimits, Header
from ...codecs._tokenwise_context import context_scope
from ...llm.halves import ServerHalf
from ...llm.sampling import pick
from .. import protocol as P
from ..errors import RequestError
from ..protocol import ErrorCode
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


@dataclass
class StepReport:
    """What one :meth:`LLMDeployment.run_steps` did (seconds; wall unless ``cpu``)."""

    frames: list[bytes]
    ok: list[bool]
    errors: list[ErrorCode | None]
    tail_calls: list[int] = field(default_factory=list)  #: sessions per tail forward
    decode_s: float = 0.0
    decode_cpu_s: float = 0.0
    tail_s: float = 0.0
    tail_cpu_s: float = 0.0
    sample_cpu_s: float = 0.0  #: picking tokens and building answer frames
    worker_cpu_s: float = 0.0


class LLMDeployment:
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
        P.check_name(name)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.name = name
        self.server = server
        self.codecs = frozenset(codecs) if codecs is not None else None
        for c in self.codecs or ():
            _ = _codecs.codec_class(c)
        self.limits = limits or _codecs.DEFAULT_LIMITS
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_step_tokens = max_step_tokens
        self.allowed_clients = frozenset(allowed_clients) if allowed_clients is not None else None
        self.sessions = SessionManager(server, max_kv_bytes, idle_timeout_s, max_sessions)
        self.contexts = ContextStore(max_context_bytes, max_contexts, local_contexts)
        self.vocab_size = int(server.part.lm_head.out_features) if hasattr(
            server.part, "lm_head") else 0

    def __repr__(self) -> str:
        cap = self.sessions.max_kv_bytes
        return (f"LLMDeployment({self.name!r}, split={self.server.split}/"
                f"{self.server.num_layers}, max_batch_size={self.max_batch_size}, "
                f"max_wait_ms={self.max_wait_ms}, max_kv_bytes={cap if cap else 'none'}, "
                f"idle_timeout_s={self.sessions.idle_timeout_s}, "
                f"codecs={sorted(self.codecs or []) or 'any'})")

    def open(self, owner: str, request: P.LLMRequest) -> ServerSession:
        """A session for an OPEN request, with the codec context it names (checked, and kept
        by :attr:`contexts`); raises :class:`RequestError`."""
        contexts = {}
        if request.context is not None:
            if self.codecs is not None and "tokenwise" not in self.codecs:
                raise RequestError(ErrorCode.CODEC_NOT_ALLOWED, f"{self.name!r} does not "
                                   "accept codec contexts (no tokenwise codec)")
            contexts = self.contexts.resolve(request.context)
        return self.sessions.open(owner, request.sampling, contexts)

    def opened(self, session: ServerSession) -> P.LLMOpened:
        """The OPEN answer for ``session``."""
        s = self.server
        return P.LLMOpened(session.id, s.split, s.hidden_size, self.vocab_size,
                           s.kv_bytes_per_token)

    # -- worker thread -----------------------------------------------------------------
    def _check_header(self, header: Header) -> None:
        if self.codecs is not None and header.codec_name not in self.codecs:
            raise RequestError(ErrorCode.CODEC_NOT_ALLOWED,
                               f"codec {header.codec_name!r} not accepted by {self.name!r} "
                               f"(accepts {', '.join(sorted(self.codecs))})")
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
            with context_scope(item.session.contexts):
                for blob in item.bitstreams:
                    (t,) = _codecs.decode(blob, self.limits, check=self._check_header)
                    parts.append(t.float())
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if hidden.shape[1] != item.tokens:
            raise RequestError(ErrorCode.BAD_INPUT, f"the frame declares {item.tokens} tokens, "
                               f"its bitstreams carry {hidden.shape[1]}")
        return hidden

    def run_steps(self, items: Sequence[StepItem]) -> StepReport:
        """Decode, run (prefills alone, single-token steps in one forward), pick the next
        tokens, build the answers. A failed step leaves its session as it was."""
        c0 = time.thread_time()
        n = len(items)
        report = StepReport([b""] * n, [False] * n, [None] * n)
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

    def _forward(self, report: StepReport, items: Sequence[StepItem],
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
            report.ok[i] = True
        report.sample_cpu_s += time.thread_time() - c1

    @staticmethod
    def _fail(report: StepReport, i: int, it: StepItem, code: ErrorCode, message: str) -> None:
        report.frames[i] = P.encode_error(it.request_id, code, message)
        report.errors[i] = code
