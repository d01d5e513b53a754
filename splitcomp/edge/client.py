"""The torch-free edge client: ONNX Runtime runs the head, the codec encodes numpy arrays, the
request travels over a WebSocket, the answer comes back decoded into numpy.

    >>> client = EdgeClient("export/resnet20", url="ws://server:8000", token="...")
    >>> answer = client.infer("cat.png")        # a path, an HWC uint8 array, or a batch
    >>> answer.outputs[0].argmax(1), answer.source  # "server", or "edge" when an exit answered

It imports numpy, Pillow, onnxruntime, websockets and :mod:`splitcomp.codecs` /
:mod:`splitcomp.runtime.protocol` (both torch-free), never torch. The bytes it sends are the
ones :class:`splitcomp.runtime.SplitClient` sends for the same features: the codecs' core
works on numpy arrays, torch is an adapter around it.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import codecs
from ..codecs.bottleneck import register_tables
from ..codecs.compact import register_template
from ..codecs.container import unpack_arrays
from ..runtime import protocol as P
from ..runtime.errors import ConnectionLost, RuntimeTimeout, ServerError, Unauthorized
from ..runtime.tls import client_context
from .manifest import Manifest, read_manifest
from .preprocess import as_batch, normalize


@dataclass(frozen=True)
class EdgeAnswer:
    """What :meth:`EdgeClient.infer` returns: the outputs (numpy), where they were computed
    (``"server"``, or ``"edge"`` when the early exit took every sample: nothing was sent),
    the request's bytes on the wire and the latency."""

    outputs: tuple[np.ndarray, ...]
    source: str
    bytes_sent: int  #: the codec bitstream (0 when the edge answered)
    latency_s: float  #: head, encoder, round trip and decode
    timing: P.Timing | None = None  #: the server's figures (None when the edge answered)

    @property
    def top1(self) -> np.ndarray:
        """The predicted class per sample (argmax of the first output)."""
        return np.asarray(self.outputs[0]).reshape(len(self.outputs[0]), -1).argmax(1)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class EdgeClient:
    """An export folder (``splitcomp export``) as a client of a splitcomp server.

    ``url``: the server's ``ws://`` or ``wss://`` address (None: :meth:`encode` only);
    ``token``: its bearer token; ``threads``: ONNX Runtime's intra-op threads; ``ca``: a CA
    file for ``wss://``. The connection opens on the first request and is reopened once (the
    request re-sent with the same id, which the server runs once) if it drops or the server
    answers a retryable error (draining); errors: :class:`~splitcomp.runtime.errors.ServerError`
    (an error answer), ``Unauthorized``, ``ConnectionLost``, ``RuntimeTimeout``.
    """

    def __init__(self, folder: str | Path, url: str | None = None, token: str | None = None, *,
                 threads: int = 1, timeout_s: float = 30.0, ca: str | Path | None = None,
                 deployment: str | None = None, max_response_bytes: int = 64 << 20) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        m = self.manifest
        if m.head_format != "onnx":
            raise ValueError(f"{folder}: the head is {m.head_format}; this client runs ONNX")
        self.head = _session(self.folder / m.head, threads)
        self.exit = _session(self.folder / m.exit.file, threads) if m.exit else None
        self.codec = self._codec(m)
        self.url, self.token, self.timeout_s = url, token, timeout_s
        self.deployment = deployment or m.deployment
        self._name = P.check_name(self.deployment)
        self._ssl = client_context(url, ca) if url else None
        self.max_response_bytes = max_response_bytes
        self.session = secrets.token_hex(16)
        self._ids = itertools.count(1)
        self._ws: Any = None
        self._stack = contextlib.ExitStack()  #: closes the connection (websockets >= 13)
        self.sent = 0  #: requests sent to the server
        self.exits = 0  #: requests answered on the edge

    def _codec(self, m: Manifest) -> codecs.Codec:
        params = dict(m.codec.params)
        if m.codec.tables:  # the bottleneck's tables: registered here, named by the stream
            tid = register_tables((self.folder / m.codec.tables).read_bytes())
            if params.get("tables", tid) != tid:
                raise ValueError(f"{self.folder}: {m.codec.tables} is not the tables "
                                 f"{params['tables']:#x} edge.json names")
            params["tables"] = tid
        if m.codec.template:
            register_template((self.folder / m.codec.template).read_bytes())
        return codecs.get(m.codec.name, **params)

    # -- the edge's work ------------------------------------------------------------------
    def features(self, images: Any) -> tuple[np.ndarray, ...]:
        """The head's outputs (the crossing tensors) for one image or a batch."""
        m = self.manifest
        x = normalize(as_batch(images, m.input), m.input)
        return tuple(self.head.run([o.name for o in m.outputs], {m.input.name: x}))

    def encode(self, images: Any) -> bytes:
        """Head and encoder: the bitstream :meth:`infer` would send for ``images``."""
        return self.encode_features(self.features(images))

    def encode_features(self, feats: tuple[np.ndarray, ...]) -> bytes:
        """The bitstream of the head's outputs ``feats``: compact (when exported so) for a
        batch of one, the shape its template holds; a full container otherwise."""
        compact = self.manifest.codec.compact and len(feats) == 1 and len(feats[0]) == 1
        return self.codec.encode_numpy(list(feats), compact=compact)

    def infer(self, images: Any) -> EdgeAnswer:
        """Run the head (and the exit, if exported) on one image or a batch; send the
        bitstream unless every sample exits; return the answer and where it came from."""
        t0 = time.perf_counter()
        feats = self.features(images)
        if self.exit is not None:
            logits, _, exits = self.exit.run(None, {self.exit.get_inputs()[0].name: feats[0]})
            if bool(np.all(exits)):
                self.exits += 1
                return EdgeAnswer((logits,), "edge", 0, time.perf_counter() - t0)
        data = self.encode_features(feats)
        resp = self.send(data)
        out = unpack_arrays(resp.bitstream)
        self.sent += 1
        return EdgeAnswer(out, "server", len(data), time.perf_counter() - t0, resp.timing)

    # -- the network ------------------------------------------------------------------------
    def send(self, bitstream: bytes) -> P.Response:
        """Send one bitstream to the deployment; the parsed answer (:class:`ServerError` for an
        error answer, :class:`ConnectionLost` when the server cannot be reached)."""
        if self.url is None:
            raise ValueError("EdgeClient without url: it can encode, not send")
        rid = next(self._ids)
        frame = P.encode_request(rid, self._name, bitstream)
        from websockets.exceptions import ConnectionClosed

        for attempt in (1, 2):
            ws = self._connection()
            try:
                ws.send(frame)
                deadline = time.monotonic() + self.timeout_s
                while True:
                    answer = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
                    if isinstance(answer, bytes):
                        resp = P.parse_response(answer)
                        if resp.request_id == rid:
                            break
            except TimeoutError:
                self.close()  # an answer arriving later must not be taken for another's
                raise RuntimeTimeout(f"request {rid} to {self.deployment!r} at {self.url}: no "
                                     f"answer within {self.timeout_s} s") from None
            except (ConnectionClosed, OSError) as e:
                self.close()
                if attempt == 2:
                    raise ConnectionLost(f"request {rid}: connection lost ({e!r})") from None
                continue
            if resp.ok:
                return resp
            assert resp.code is not None
            if resp.code not in P.RETRYABLE or attempt == 2:
                raise ServerError(resp.code, resp.message, rid)
            self.close()  # a draining server: reconnect (elsewhere, behind a balancer)
        raise AssertionError("unreachable")

    def _connection(self) -> Any:
        if self._ws is not None:
            return self._ws
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {P.HEADER_SESSION: self.session}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            self._ws = self._stack.enter_context(connect(
                self.url, additional_headers=headers, ssl=self._ssl, compression=None,
                open_timeout=self.timeout_s, proxy=None, max_size=self.max_response_bytes,
                user_agent_header="splitcomp"))
        except InvalidStatus as e:
            status = e.response.status_code
            if status in (401, 403):
                raise Unauthorized(f"{self.url} refused the token (HTTP {status})") from None
            raise ConnectionLost(f"{self.url} refused the connection: HTTP {status}") from None
        except (OSError, TimeoutError) as e:
            raise ConnectionLost(f"cannot connect to {self.url}: {e} (is a splitcomp server "
                                 "running there?)") from None
        return self._ws

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        self._ws = None
        self._stack.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
