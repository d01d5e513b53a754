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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
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

    @property
    def wire_bytes(self) -> int:
        """Both frames with their WebSocket headers: every byte above TCP."""
        return ws_frame_bytes(self.bytes_sent, True) + ws_frame_bytes(self.bytes_received, False)


class AsyncRemoteLM:
    """An edge half, a codec and one session on a remote LLM deployment.

    ``client``: share an existing :class:`AsyncSplitClient` (its connection); otherwise one
    is made from ``url`` and ``client_options`` (``token``, ``timeout_s``, ...) and closed
    with this object. ``sampling``: how the server picks tokens (default greedy).
    """

    def __init__(self, model: nn.Module, split: int, url: str | None = None,
                 deployment: str = "llm", codec: Codec | str = "fp32", *,
                 codec_params: dict[str, Any] | None = None, per_token: bool = True,
                 sampling: P.Sampling | None = None, client: AsyncSplitClient | None = None,
                 edge_in_thread: bool = True, **client_options: Any) -> None:
        if client is None and url is None:
            raise ValueError("give a server url or a client")
        self.edge = EdgeHalf(model, split)
        self.wire = Wire(as_codec(codec, **(codec_params or {})), per_token=per_token)
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

    async def open(self) -> P.LLMOpened:
        """Open the server session (done by the first step otherwise). A codec with a session
        context (``tokenwise``) names it by its SHA-256 first and sends its bytes only if the
        server answers ``CONTEXT_UNKNOWN`` (counted in :attr:`context_bytes_sent`)."""
        if self.session is None:
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
        they were; after a timeout or a lost connection the session's state is unknown."""
        opened = await self.open()
        ids = input_ids.reshape(1, -1)
        before = self.edge.position
        try:
            if self.edge_in_thread:
                blobs = await asyncio.to_thread(self._encode, ids)
            else:
                blobs = self._encode(ids)
            rid = self.client.next_request_id()
            frame = P.encode_llm_step(rid, opened.session, ids.shape[1], blobs)
            resp_frame, resp, _, latency = await self.client.exchange(rid, frame)
        except (ServerError, ValueError):  # the server refused it and is unchanged: so is the edge
            self.edge.cache.truncate(before)
            raise
        r = resp.llm
        if not isinstance(r, P.LLMToken):
            raise ServerError(P.ErrorCode.BAD_FRAME, "STEP not answered by a token", rid)
        return RemoteStep(r.token, r.logprob, r.top, r.position, ids.shape[1], len(frame),
                          len(resp_frame), latency, r.timing)

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
