"""Scale-out: the same services as a Ray Serve deployment (``splitcomp serve --backend ray``).

Transport: HTTP ``POST <route>`` whose body is one binary request frame (docs/protocol.md);
the response body is the binary response frame (result or typed error), status 200. Requests
from all clients are batched by ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``
= ``max_wait_ms / 1000``) and handed to :func:`~splitcomp.runtime.handler.handle_frames`, the
request path of the embedded server without its transport: vision tails and LLM sessions
alike (sessions are bound to the client id of the bearer token).

Guards, twice: :class:`ProxyGuard` runs in Serve's HTTP proxy (installed by :func:`start`)
and refuses, before anything reaches a replica, a missing or wrong bearer token on every path
but ``/-/healthz`` (401; ``/-/routes`` included) and a body past ``max_frame_bytes`` (413,
from its Content-Length or as soon as a chunked body's running total passes it); each
:class:`TailReplica` checks the same again (its own gRPC port can be reached without the
proxy) and puts a :class:`~splitcomp.runtime.handler.FrontGate` before its batches: retries
with the same ``X-Splitcomp-Session``, request id and bytes answered once, per-client
in-flight limits (requests, bytes). Both are per replica. A local Ray started for a loopback
``host`` binds all its ports there. LLM sessions live in the replica that opened them and
Serve does not route a session back to its replica, so an application with LLM deployments
runs one replica; see docs/scale-out.md. Needs the ``ray`` extra (``pip install .[ray]``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import ipaddress
import os
import pickle
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from . import protocol as P
from .auth import Tokens
from .dedup import DedupCache
from .deployment import zoo_deployment
from .handler import SESSION_RE, FrontGate, handle_frames
from .service import Service

DEFAULT_ROUTE = "/splitcomp"
FRAME_TYPE = "application/octet-stream"
#: the environment variable carrying :class:`ProxyGuard`'s settings into Serve's proxy
GUARD_ENV = "SPLITCOMP_RAY_PROXY_GUARD"
#: Serve's hook for middlewares in its HTTP proxy (``HTTPOptions.middlewares`` is gone)
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_READY_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
OPEN_PATHS = frozenset({"/-/healthz"})  #: answered without a token (like /healthz embedded)

DeploymentSource = Sequence[Service] | Callable[[], Sequence[Service]]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to pass ``limit`` bytes (from its
    Content-Length, or its running total while streaming: a chunked body is never held
    beyond the limit)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _bind_replica_grpc() -> None:
    """Serve 2.60 binds each replica's inter-deployment gRPC server to ``[::]:0`` whatever the
    node's address; on a node whose Ray runs on a loopback address, bind it there too (a
    private hook, skipped when Serve's internals differ)."""
    try:
        from ray.serve._private import replica as internals

        node_ip = ray.util.get_node_ip_address()
        add_port = internals.add_port_to_grpc_server
    except Exception:  # noqa: BLE001 - another Serve version: leave it as it is
        return
    if not _loopback(node_ip) or getattr(add_port, "splitcomp_bound", False):
        return

    def bound(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{node_ip}:{address[5:]}"
        return add_port(server, address)

    bound.splitcomp_bound = True  # type: ignore[attr-defined]
    internals.add_port_to_grpc_server = bound


class TailReplica:
    """One Serve replica: authenticates, bounds frames, dedups retries, limits each client's
    requests in flight, batches request frames and runs the services."""

    def __init__(self, deployments: DeploymentSource, *, tokens: Tokens | None = None,
                 max_batch_size: int = 32, max_wait_ms: float = 2.0,
                 max_frame_bytes: int = 16 << 20, threads: int | None = None,
                 max_inflight_per_client: int = 256,
                 max_inflight_bytes_per_client: int = 64 << 20,
                 dedup_entries: int = 65536, dedup_bytes: int = 64 << 20,
                 dedup_ttl_s: float = 60.0) -> None:
        """``deployments``: the services, or a callable building them in the replica; the
        limits as :class:`~splitcomp.runtime.server.Server`'s (per replica here)."""
        _bind_replica_grpc()
        if threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        deps = deployments() if callable(deployments) else deployments
        self.services = {d.name: d for d in deps}
        self.tokens = tokens
        self.max_frame_bytes = max_frame_bytes
        self.gate = FrontGate(max_inflight_per_client=max_inflight_per_client,
                              max_inflight_bytes_per_client=max_inflight_bytes_per_client,
                              dedup=DedupCache(dedup_entries, dedup_bytes, dedup_ttl_s))
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
        session = request.headers.get(P.HEADER_SESSION)
        if session is not None and not SESSION_RE.match(session):
            return Response(f"{P.HEADER_SESSION}: 1-64 characters [A-Za-z0-9_-]\n",
                            status_code=400)
        body = await read_body(request, self.max_frame_bytes)
        if body is None:
            return Response("frame too large\n", status_code=413)
        # dedup within the session a client names (none without); limits per token, else
        # per session (all anonymous clients without one share a budget)
        who = client if self.tokens is not None or session is None else ("session", session)
        frame = await self.gate.submit(body, lambda: self.batched((client, body)), who=who,
                                       identity=(client, session) if session else None)
        return Response(frame, media_type=FRAME_TYPE)

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
    """A keep-alive HTTP connection posting request frames to a Ray Serve route (one thread).
    ``session``: the dedup namespace it names (``X-Splitcomp-Session``; e.g.
    ``secrets.token_hex(16)``, kept across reconnections): a frame posted again under it, same
    request id and bytes, is answered once. None: no header, nothing remembered (request ids
    may then repeat, as a load generator's do)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0,
                 session: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(u.hostname or "127.0.0.1", u.port, timeout=timeout_s)
        self._path = u.path or "/"
        self._headers = {"Content-Type": FRAME_TYPE}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self.session = session
        if session is not None:
            self._headers[P.HEADER_SESSION] = self.session

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


class ProxyGuard:
    """ASGI middleware in Serve's HTTP proxy: a bearer token on every path but
    :data:`OPEN_PATHS` (401 before the proxy routes or answers anything: ``/-/routes`` lists
    the applications), and request bodies on ``route`` bounded by ``max_frame_bytes`` (413
    from the Content-Length, or as soon as a streamed body passes it; the proxy would
    otherwise queue a whole body for the replica). WebSockets are refused."""

    def __init__(self, app: Any, *, tokens: Tokens | None, route: str,
                 max_frame_bytes: int) -> None:
        self.app = app
        self.tokens = tokens
        self.route = route.rstrip("/") or "/"
        self.max_frame_bytes = max_frame_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if self.tokens is not None and self.tokens.authenticate(
                headers.get(b"authorization", b"").decode("latin-1")) is None:
            await _respond(send, 401, b"missing or invalid bearer token\n",
                           [(b"www-authenticate", b"Bearer")])
            return
        path = scope["path"].rstrip("/") or "/"
        if scope.get("method") != "POST" or not (
                path == self.route or path.startswith(self.route.rstrip("/") + "/")):
            await self.app(scope, receive, send)
            return
        body = await self._read(headers, receive)
        if body is None:
            await _respond(send, 413, b"frame too large\n", [(b"connection", b"close")])
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, whenever it comes

        await self.app(scope, replay, send)

    async def _read(self, headers: dict, receive: Callable) -> bytes | None:
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_frame_bytes):
            return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""  # the client left: the app sees an empty body, then the disconnect
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_frame_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _respond(send: Callable, status: int, text: bytes,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(text)).encode()), *headers]})
    await send({"type": "http.response.body", "body": text})


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the
    :class:`ProxyGuard` whose settings :func:`start` put in ``SPLITCOMP_RAY_PROXY_GUARD``."""
    raw = os.environ.get(GUARD_ENV)
    if not raw:
        return []
    settings = pickle.loads(base64.b64decode(raw))  # noqa: S301 - written by start() itself
    return [Middleware(ProxyGuard, **settings)]


def guard_env(tokens: Tokens | None, route: str, max_frame_bytes: int) -> dict[str, str]:
    """The environment that installs :class:`ProxyGuard` in Serve's proxies."""
    settings = {"tokens": tokens, "route": route, "max_frame_bytes": max_frame_bytes}
    return {PROXY_CALLBACK_ENV: f"{__name__}:proxy_middlewares",
            GUARD_ENV: base64.b64encode(pickle.dumps(settings)).decode("ascii"),
            # the proxy imports this module (torch with it) before it reports ready: several
            # seconds on a loaded 2-core machine, against Serve's default check of 5 s
            PROXY_READY_ENV: os.environ.get(PROXY_READY_ENV, "60")}


def init_local(host: str, num_cpus: int | None = None,
               env: dict[str, str] | None = None) -> None:
    """Start a local Ray instance whose ports listen on ``host`` when it is a loopback address
    (the node's address, its dashboard agent and every gRPC port; other hosts: Ray's defaults,
    see docs/scale-out.md); ``env`` goes to every Ray process it starts."""
    from ray._private import ray_constants

    kw: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in [*(env or {}), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]}
    cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env or {})
    if _loopback(host):
        # what Ray does on macOS and Windows: the node's address is the loopback one, and
        # its gRPC servers bind there instead of on every interface
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        kw.update(_node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start(app: serve.Application, *, host: str = "127.0.0.1", port: int = 8000,
          route: str = DEFAULT_ROUTE, address: str | None = None, num_cpus: int | None = None,
          tls: tuple[str, str] | None = None, name: str = "splitcomp",
          tokens: Tokens | None = None, max_frame_bytes: int = 16 << 20) -> str:
    """Connect to (``address``) or start a Ray cluster (bound to ``host`` when it is a
    loopback address), start Serve's HTTP proxy on ``host:port`` with :class:`ProxyGuard`
    (``tokens``, ``max_frame_bytes``: pass the replicas' own) and deploy ``app``; returns the
    URL to POST frames to. Stop with :func:`shutdown`."""
    env = guard_env(tokens, route, max_frame_bytes)
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            init_local(host, num_cpus, env)
    http_options: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        http_options.update(ssl_certfile=tls[0], ssl_keyfile=tls[1])
    # the proxies inherit the controller's environment (on a cluster joined by ``address``
    # as well; it only applies when this call creates Serve's controller)
    serve.start(http_options=http_options, controller_options={"runtime_env": {"env_vars": env}})
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
                    threads=args.threads,
                    max_inflight_per_client=getattr(args, "max_inflight_per_client", 256),
                    max_inflight_bytes_per_client=getattr(
                        args, "max_inflight_bytes_per_client", 64 << 20))
    url = start(app, host=args.host, port=args.port or 8000, route=args.route,
                address=args.ray_address,
                tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
                tokens=tokens, max_frame_bytes=args.max_frame_bytes)
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
