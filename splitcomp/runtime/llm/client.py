"""The edge side of split generation over the network: the edge half and its KV cache stay
here, each step's hidden states cross as codec bitstreams in LLM frames
(``docs/protocol.md``), the server's half runs the rest and answers with the next token.

    >>> async with AsyncRemoteLM(model, 15, "ws://127.0.0.1:8765", "smollm2", "rans",
    ...                          codec_params={"bits": 4}, token=TOKEN) as lm:
    ...     async for step in lm.generate(prompt_ids, 32):
    ...         print(step.token, step.bytes_sent)

:class:`AsyncRemoteLM` is asyncio (many sessions in one process, one connection each or a
shared :class:`~splitcomp.runtime.AsyncSplitClient`); :class:`RemoteLM` is the same for
synchronous code (``splitcomp generate --server``). Reconnection and retries come from the
runtime client; a retried step is answered once by the server (request ids are remembered).
A codec with a session context (``tokenwise``) has it sent at OPEN when the server lacks it
(:mod:`.contexts`).

A server session does not outlive its server (a restart, a crash, the idle timeout): the
client keeps the bitstreams of every step the server answered, and when a STEP gets
``SESSION_NOT_FOUND`` (or a step's outcome is unknown after a timeout) it opens a new session
and replays them, in STEPs of up to ``replay_chunk_tokens`` tokens, the pending step's
bitstreams last; the answer to that last STEP is the pending step's. The edge half is not
run again. The server's cache is then the one the lost session had (up to float rounding:
a prefill instead of single steps) and its sampled tokens are the same (the server seeds each
draw by position), so generation goes on as if nothing happened (``resume=False``: raise
instead, and keep no history).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...codecs import Codec
from ...llm.halves import EdgeHalf
from ...llm.hidden_wire import Wire
from ...llm.pipeline import as_codec
from .. import protocol as P
from ..client import AsyncSplitClient
from ..errors import ServerError
from ..loop_thread import LoopThread
from ..protocol import ws_frame_bytes
from .contexts import codec_context


@dataclass(frozen=True)
class RemoteStep:
    """One generated token and what it cost."""

    token: int
    logprob: float  #: the model's log-probability of ``token``
    top: tuple[tuple[int, float], ...]  #: the most likely (token, log-probability) pairs
    position: int  #: tokens the server session holds after this step
    tokens_sent: int  #: tokens whose hidden states this step carried
    bytes_sent: int  #: request frame (protocol bytes; WebSocket framing excluded)
    bytes_received: int  #: answer frame
    latency_s: float
    timing: P.Timing
    replayed: int = 0  #: tokens of earlier steps re-sent before it (a rebuilt server session)

    @property
    def wire_bytes(self) -> int:
        """Both frames with their WebSocket headers: every byte above TCP."""
        return ws_frame_bytes(self.bytes_sent, True) + ws_frame_bytes(self.bytes_received, False)


class AsyncRemoteLM:
    """An edge half, a codec and one session on a remote LLM deployment.

    ``client``: share an existing :class:`AsyncSplitClient` (its connection); otherwise one
    is made from ``url`` and ``client_options`` (``token``, ``timeout_s``, ...) and closed
    with this object. ``sampling``: how the server picks tokens (default greedy).
    ``resume``: rebuild a server session that was lost (module docstring) from the
    bitstreams sent so far (kept here: the bytes sent, one copy); ``replay_chunk_tokens``:
    the most tokens one replay STEP carries (halved when the server answers ``TOO_LARGE``);
    ``max_rebuilds``: attempts per step when the session is lost again while replaying.
    ``compact`` (per-token streams): a stream whose codec, parameters and shape the session
    has seen before is a session stream, 5 bytes of container instead of ~21
    (``docs/protocol.md``, "Compact steps"; 0.22 bit per element at SmolLM2's 576 channels).
    ``model`` may hold only the edge side's tensors (the rest on ``meta``:
    :func:`~splitcomp.llm.partial.partial_model`); it must hold those.
    """

    def __init__(self, model: nn.Module, split: int, url: str | None = None,
                 deployment: str = "llm", codec: Codec | str = "fp32", *,
                 codec_params: dict[str, Any] | None = None, per_token: bool = True,
                 compact: bool = True, sampling: P.Sampling | None = None,
                 client: AsyncSplitClient | None = None,
                 edge_in_thread: bool = True, resume: bool = True,
                 replay_chunk_tokens: int = 512, max_rebuilds: int = 3,
                 **client_options: Any) -> None:
        if replay_chunk_tokens < 1 or max_rebuilds < 1:
            raise ValueError("replay_chunk_tokens and max_rebuilds must be >= 1")
        if client is None and url is None:
            raise ValueError("give a server url or a client")
        self.edge = EdgeHalf(model, split)
        missing = [n for n, p in self.edge.part.named_parameters() if p.is_meta]
        if missing:  # a partially loaded model of the other side, or cut elsewhere
            raise ValueError(f"the edge side (blocks [0, {split})) is not loaded: {missing[0]} "
                             f"and {len(missing) - 1} more on meta")
        self.wire = Wire(as_codec(codec, **(codec_params or {})), per_token=per_token,
                         compact=compact and per_token)
        self.deployment = deployment
        self._name = P.check_name(deployment)
        self.sampling = sampling or P.Sampling()
        self._own_client = client is None
        self.client = client if client is not None else AsyncSplitClient(
            url, None, self.wire.codec, deployment, **client_options)  # type: ignore[arg-type]
        self.edge_in_thread = edge_in_thread
        self.session: P.LLMOpened | None = None
        self.context_bytes_sent = 0  #: codec context bytes sent at OPEN (0: server had it)
        self.open_bytes_sent = 0  #: OPEN request frames, the context's included
        self.open_bytes_received = 0
        self.resume = resume
        self.replay_chunk_tokens = replay_chunk_tokens
        self.max_rebuilds = max_rebuilds
        #: every answered step's bitstreams in order, as (bitstreams, tokens) units that
        #: cannot be split (one per token, or one per step with ``per_token=False``)
        self._history: list[tuple[tuple[bytes, ...], int]] = []
        self._answers: dict[int, int] = {}  #: position after a step -> the token it got
        self._synced = True  #: the server session holds exactly the history (False: unknown)
        self.rebuilds = 0  #: server sessions rebuilt by replaying the history
        self.replayed_tokens = 0  #: tokens of earlier steps re-sent by those rebuilds
        self.replay_bytes_sent = 0  #: their STEP frames (the pending steps' included)
        self.replay_bytes_received = 0
        self.replay_mismatches = 0  #: replayed steps answered with another token than before

    async def open(self) -> P.LLMOpened:
        """Open the server session (done by the first step otherwise). A codec with a session
        context (``tokenwise``) names it by its SHA-256 first and sends its bytes only if the
        server answers ``CONTEXT_UNKNOWN`` (counted in :attr:`context_bytes_sent`)."""
        if self.session is None:
            if not self._history:  # a new server session, not rebuilt from the old streams
                self.wire.forget()
            ref = codec_context(self.wire.codec, send=False)
            try:
                opened = await self._open(ref)
            except ServerError as e:
                if ref is None or e.code is not P.ErrorCode.CONTEXT_UNKNOWN:
                    raise
                ref = codec_context(self.wire.codec, send=True)
                assert ref is not None
                opened = await self._open(ref)
                self.context_bytes_sent += len(ref.data)
            self.session = opened
            if (opened.split, opened.hidden_size) != (self.edge.split, self.edge.hidden_size):
                await self.close()
                raise ValueError(f"{self.deployment!r} cuts at block {opened.split} with hidden "
                                 f"size {opened.hidden_size}; this edge half cuts at "
                                 f"{self.edge.split} with {self.edge.hidden_size}")
        return self.session

    async def _open(self, context: P.CodecContext | None) -> P.LLMOpened:
        rid = self.client.next_request_id()
        frame = P.encode_llm_open(rid, self._name, self.sampling, context)
        self.open_bytes_sent += len(frame)
        resp_frame, resp, _, _ = await self.client.exchange(rid, frame)
        self.open_bytes_received += len(resp_frame)
        opened = resp.llm
        if not isinstance(opened, P.LLMOpened):
            raise ServerError(P.ErrorCode.BAD_FRAME, "OPEN not answered by OPEN", rid)
        return opened

    def _encode(self, ids: torch.Tensor) -> list[bytes]:
        return self.wire.send(self.edge.step(ids))

    async def step(self, input_ids: torch.Tensor) -> RemoteStep:
        """Send the new ids' hidden states (the prompt at first, then one token) and return
        the server's next token. An error answer (:class:`ServerError`) leaves both sides as
        they were. A lost server session is rebuilt (``resume``); after a timeout or a lost
        connection the edge step is undone and the next step rebuilds the server session
        (without ``resume``: the session's state is unknown)."""
        ids = input_ids.reshape(1, -1)
        tokens = ids.shape[1]
        before = self.edge.position
        try:
            if self.session is None and not self._history:
                await self.open()
            if self.edge_in_thread:
                blobs = await asyncio.to_thread(self._encode, ids)
            else:
                blobs = self._encode(ids)
            units = _units(blobs, tokens)
            replayed = 0
            if self.session is not None and self._synced:
                try:
                    r, sent, received, latency = await self._send(units)
                except ServerError as e:
                    if not self.resume or e.code is not P.ErrorCode.SESSION_NOT_FOUND:
                        raise
                    self.session = None  # the server lost it (restart, idle timeout)
                    self._synced = False
            if not self._synced or self.session is None:
                replayed = sum(t for _, t in self._history)
                r, sent, received, latency = await self._rebuild(units)
        except (ServerError, ValueError):  # the server refused it and is unchanged: so is the edge
            self.edge.cache.truncate(before)
            raise
        except BaseException:
            if self.resume:  # outcome unknown: undo here, rebuild the server session next time
                self.edge.cache.truncate(before)
                self._synced = False
            raise
        self.wire.confirm()  # the server session holds these streams' templates now
        if self.resume:
            self._history.extend(units)
            self._answers[r.position] = r.token
        return RemoteStep(r.token, r.logprob, r.top, r.position, tokens, sent, received,
                          latency, r.timing, replayed)

    async def _send(self, units: Sequence[tuple[tuple[bytes, ...], int]]
                    ) -> tuple[P.LLMToken, int, int, float]:
        """One STEP of ``units`` on the current session: (answer, bytes sent, bytes received,
        latency s)."""
        assert self.session is not None
        rid = self.client.next_request_id()
        frame = P.encode_llm_step(rid, self.session.session, sum(t for _, t in units),
                                  [b for blobs, _ in units for b in blobs])
        resp_frame, resp, _, latency = await self.client.exchange(rid, frame)
        r = resp.llm
        if not isinstance(r, P.LLMToken):
            raise ServerError(P.ErrorCode.BAD_FRAME, "STEP not answered by a token", rid)
        return r, len(frame), len(resp_frame), latency

    async def _rebuild(self, pending: list[tuple[tuple[bytes, ...], int]]
                       ) -> tuple[P.LLMToken, int, int, float]:
        """A new server session holding the history, then ``pending``: the answer to the
        last replayed STEP (``pending``'s). Tries again if that session is lost too."""
        for attempt in range(1, self.max_rebuilds + 1):
            await self._forget()
            await self.open()
            try:
                out = await self._replay(self._history + pending)
            except ServerError as e:
                if e.code is not P.ErrorCode.SESSION_NOT_FOUND or attempt == self.max_rebuilds:
                    raise
                continue
            self._synced = True
            if self._history:
                self.rebuilds += 1
                self.replayed_tokens += sum(t for _, t in self._history)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    async def _replay(self, units: list[tuple[tuple[bytes, ...], int]]
                      ) -> tuple[P.LLMToken, int, int, float]:
        """Send ``units`` in STEPs of at most :attr:`replay_chunk_tokens` tokens (and within
        the server's frame limit); the last STEP's answer."""
        budget = (self.client.max_frame_bytes or 16 << 20) - 64
        limit, i, out = self.replay_chunk_tokens, 0, None
        while i < len(units):
            j, tokens, size = i, 0, 0
            while j < len(units) and (j == i or (
                    tokens + units[j][1] <= limit
                    and size + sum(len(b) + 4 for b in units[j][0]) <= budget)):
                tokens += units[j][1]
                size += sum(len(b) + 4 for b in units[j][0])
                j += 1
            try:
                out = await self._send(units[i:j])
            except ServerError as e:  # refused and unchanged: send less at a time
                if e.code is not P.ErrorCode.TOO_LARGE or j - i == 1:
                    raise
                limit = max(tokens // 2, 1)
                continue
            r = out[0]
            if self._history:
                self.replay_bytes_sent += out[1]
                self.replay_bytes_received += out[2]
            if self._answers.get(r.position, r.token) != r.token:
                self.replay_mismatches += 1
            i = j
        assert out is not None
        return out

    async def _forget(self) -> None:
        """Drop the current server session (closed if the server still has it: best effort)."""
        opened, self.session = self.session, None
        if opened is None:
            return
        rid = self.client.next_request_id()
        try:
            await self.client.exchange(rid, P.encode_llm_close(rid, opened.session))
        except ServerError:  # already gone
            pass

    async def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                       eos_token_id: int | None = None) -> AsyncIterator[RemoteStep]:
        """Up to ``max_new_tokens`` tokens, each as soon as the server picked it."""
        ids = prompt_ids.reshape(1, -1)
        for _ in range(max_new_tokens):
            step = await self.step(ids)
            yield step
            if eos_token_id is not None and step.token == eos_token_id:
                return
            ids = torch.tensor([[step.token]])

    async def close(self) -> None:
        """Close the server session (its KV cache is freed) and, if owned, the connection."""
        opened, self.session = self.session, None
        try:
            if opened is not None:
                rid = self.client.next_request_id()
                try:
                    await self.client.exchange(rid, P.encode_llm_close(rid, opened.session))
                except ServerError as e:  # already expired: nothing left to free
                    if e.code is not P.ErrorCode.SESSION_NOT_FOUND:
                        raise
        finally:
            self.edge.reset()
            self._history.clear()
            self._answers.clear()
            self._synced = True
            if self._own_client:
                await self.client.close()

    async def __aenter__(self) -> AsyncRemoteLM:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RemoteLM:
    """Synchronous :class:`AsyncRemoteLM` (its event loop runs in a daemon thread), with the
    interface of :class:`~splitcomp.llm.SplitLM`: ``generate`` yields steps as they come."""

    def __init__(self, model: nn.Module, split: int, url: str, deployment: str = "llm",
                 codec: Codec | str = "fp32", **options: Any) -> None:
        options.setdefault("edge_in_thread", False)
        self.lm = AsyncRemoteLM(model, split, url, deployment, codec, **options)
        # each step has the client's own timeout (retries included); the loop's is a backstop
        self._loop = LoopThread("splitcomp-lm", self.lm.client.timeout_s + 30.0)

    @property
    def wire(self) -> Wire:
        return self.lm.wire

    @property
    def context_bytes_sent(self) -> int:
        """Codec context bytes sent at OPEN (0: the server had the context)."""
        return self.lm.context_bytes_sent

    @property
    def rebuilds(self) -> int:
        """Server sessions rebuilt by replaying the history (after a restart, expiry)."""
        return self.lm.rebuilds

    def open(self) -> P.LLMOpened:
        return self._loop.run(self.lm.open())

    def step(self, input_ids: torch.Tensor) -> RemoteStep:
        return self._loop.run(self.lm.step(input_ids))

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None) -> Iterator[RemoteStep]:
        ids = prompt_ids.reshape(1, -1)
        for _ in range(max_new_tokens):
            step = self.step(ids)
            yield step
            if eos_token_id is not None and step.token == eos_token_id:
                return
            ids = torch.tensor([[step.token]])

    def close(self) -> None:
        self._loop.stop(self.lm.close())

    def __enter__(self) -> RemoteLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _units(blobs: list[bytes], tokens: int) -> list[tuple[tuple[bytes, ...], int]]:
    """A step's bitstreams as replay units: one per token when each carries one, else one
    unit for the whole step (a bitstream of several tokens cannot be split)."""
    if len(blobs) == tokens:
        return [((b,), 1) for b in blobs]
    return [(tuple(blobs), tokens)]
