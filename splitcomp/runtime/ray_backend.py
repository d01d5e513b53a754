"""Scale-out: the same services as a Ray Serve deployment (``splitcomp serve --backend ray``).

Transport: HTTP ``POST <route>`` whose body is one binary request frame (docs/protocol.md);
the response body is the binary response frame (result or typed error), status 200. Requests
from all clients are batched by ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``
= ``max_wait_ms / 1000``) and handed to :func:`~splitcomp.runtime.handler.handle_frames`, the
request path of the embedded server without its transport: vision tails and LLM sessions
alike (sessions are bound to the client id of the bearer token). A missing or wrong bearer
token gets HTTP 401 and a frame above ``max_frame_bytes`` HTTP 413, both before any decoding.
No request-id deduplication (HTTP has no session). LLM sessions live in the replica that
opened them and Serve does not route a session back to its replica, so an application with LLM
deployments runs one replica; see docs/scale-out.md. Needs the ``ray`` extra
(``pip install .[ray]``).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from .auth import Tokens
from .deployment import zoo_deployment
from .handler import handle_frames
from .service import Service

DEFAULT_ROUTE = "/splitcomp"
FRAME_TYPE = "application/octet-stream"

DeploymentSource = Sequence[Service] | Callable[[], Sequence[Service]]


class TailReplica:
    """One Serve replica: authenticates, batches request frames and runs the services."""

    def __init__(self, deployments: DeploymentSource, *, tokens: Tokens | None = None,
                 max_batch_size: int = 32, max_wait_ms: float = 2.0,
                 max_frame_bytes: int = 16 << 20, threads: int | None = None) -> None:
        """``deployments``: the services, or a callable building them in the replica."""
        if threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        deps = deployments() if callable(deployments) else deployments
        self.services = {d.name: d for d in deps}
        self.tokens = tokens
        self.max_frame_bytes = max_frame_bytes
        self._lock = threading.Lock()  # services are thread-confined: one batch at a time
        self._upkeep_due = {name: 0.0 for name, s in self.services.items()
                            if s.upkeep_period_s() is not None}
        self.batched.set_max_batch_size(max_batch_size)
        self.batched.set_batch_wait_timeout_s(max_wait_ms / 1000.0)

    async def __call__(self, request: Request) -> Response:
        client = "anonymous"
        if self.tokens is not None:
            client = self.tokens.authenticate(request.headers.get("authorization"))
            if client is None:
                return Response("missing or invalid bearer token\n", status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method != "POST":
            return Response("POST a request frame\n", status_code=405)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_frame_bytes:
            return Response("frame too large\n", status_code=413)
        body = await request.body()
        if len(body) > self.max_frame_bytes:
            return Response("frame too large\n", status_code=413)
        return Response(await self.batched((client, body)), media_type=FRAME_TYPE)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def batched(self, requests: list[tuple[str, bytes]]) -> list[bytes]:
        """(client id, request frame) pairs of one batch in, response frames out (in a worker
        thread)."""
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[tuple[str, bytes]]) -> list[bytes]:
        with self._lock, torch.inference_mode():
            now = time.monotonic()
            for name, due in self._upkeep_due.items():
                if now >= due:
                    service = self.services[name]
                    service.upkeep()
                    self._upkeep_due[name] = now + (service.upkeep_period_s() or 1.0)
            return handle_frames(self.services, [f for _, f in requests],
                                 [c for c, _ in requests])


def build_app(deployments: DeploymentSource, *, num_replicas: int = 1,
              num_cpus: float = 1.0, max_ongoing_requests: int | None = None,
              name: str = "splitcomp", llm: bool = False,
              **replica_options: Any) -> serve.Application:
    """A Serve application of :class:`TailReplica` (``replica_options`` go to its
    constructor: tokens, max_batch_size, max_wait_ms, max_frame_bytes, threads). With LLM
    deployments (``llm=True``) it must run one replica: a session lives in one replica."""
    if llm and num_replicas != 1:
        raise ValueError(f"LLM sessions live in the replica that opened them: serve LLM "
                         f"deployments with one replica, not {num_replicas}")
    batch = int(replica_options.get("max_batch_size", 32))
    dep = serve.deployment(TailReplica, name=name).options(
        num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus},
        # a replica must hold at least a full batch (Serve's default is 5)
        max_ongoing_requests=max_ongoing_requests or max(4 * batch, 64))
    return dep.bind(deployments, **replica_options)


def zoo_deployments(specs: Sequence[tuple[str, str, str, list[str] | None]], weights: str,
                    max_batch_size: int, max_wait_ms: float,
                    more: Callable[[], Sequence[Service]] | None = None) -> list[Service]:
    """Build zoo deployments (run inside each replica): ``(name, model, split, codecs)``, and
    the services ``more`` builds (e.g. LLM deployments)."""
    deps: list[Service] = [
        zoo_deployment(model, at, weights=weights, name=name, codecs=codecs,
                       max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)[0]
        for name, model, at, codecs in specs]
    return deps + list(more() if more is not None else [])


class FrameClient:
    """A keep-alive HTTP connection posting request frames to a Ray Serve route (one thread)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        u = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(u.hostname or "127.0.0.1", u.port, timeout=timeout_s)
        self._path = u.path or "/"
        self._headers = {"Content-Type": FRAME_TYPE}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    def post(self, frame: bytes) -> tuple[int, bytes]:
        """Send one request frame; returns (HTTP status, body: a response frame on 200)."""
        self._conn.request("POST", self._path, body=frame, headers=self._headers)
        resp = self._conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FrameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(app: serve.Application, *, host: str = "127.0.0.1", port: int = 8000,
          route: str = DEFAULT_ROUTE, address: str | None = None, num_cpus: int | None = None,
          tls: tuple[str, str] | None = None, name: str = "splitcomp") -> str:
    """Connect to (``address``) or start a Ray cluster, start Serve's HTTP proxy and deploy
    ``app``; returns the URL to POST frames to. Stop with :func:`shutdown`."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    http_options: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        http_options.update(ssl_certfile=tls[0], ssl_keyfile=tls[1])
    serve.start(http_options=http_options)
    serve.run(app, name=name, route_prefix=route, blocking=False)
    scheme = "https" if tls else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"{scheme}://{shown}:{port}{route}"


def shutdown() -> None:
    """Tear down Serve and disconnect from (or stop the local) Ray."""
    serve.shutdown()
    ray.shutdown()


def run_cli(args: Any, specs: Sequence[tuple[str, str, str, list[str] | None]],
            llm: Callable[[], Sequence[Service]] | None = None) -> int:
    """``splitcomp serve --backend ray``: deploy and block until SIGINT/SIGTERM. ``llm``
    builds the LLM deployments in the replica (then one replica serves everything)."""
    import signal

    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    build = functools.partial(zoo_deployments, list(specs), args.weights, args.max_batch_size,
                              args.max_wait_ms, llm)
    tokens = Tokens.load(Path(args.tokens)) if args.tokens else None
    app = build_app(build, num_replicas=args.num_replicas, num_cpus=args.replica_cpus,
                    llm=llm is not None, tokens=tokens, max_batch_size=args.max_batch_size,
                    max_wait_ms=args.max_wait_ms, max_frame_bytes=args.max_frame_bytes,
                    threads=args.threads)
    url = start(app, host=args.host, port=args.port or 8000, route=args.route,
                address=args.ray_address,
                tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    names = [s[0] for s in specs] + (["--llm"] if llm is not None else [])
    print(f"deployments {names} on Ray Serve, {args.num_replicas} replica(s)", flush=True)
    print(f"listening on {url} (POST request frames)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    shutdown()
    return 0


def wait_ready(url: str, timeout_s: float = 60.0, token: str | None = None) -> None:
    """Block until the route answers (any HTTP status from the app, not the proxy's 404/503)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with FrameClient(url, token, timeout_s=5.0) as c:
                status, _ = c.post(b"")
            if status not in (404, 503):
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s (last: {last!r})")
