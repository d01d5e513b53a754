"""``--backend ray``: the request path as a Ray Serve deployment. One local Ray for the module
(bound to 127.0.0.1; starting it is the expensive part): 401 on every path but /-/healthz,
413 before an oversized body ends, batching and results equal to the local tail, allowed
clients, per-client in-flight limits, retries answered once, every Ray port on loopback. The
:class:`FrontGate` before the replicas' batches is also tested alone (no Ray needed)."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch

from splitcomp import codecs
from splitcomp.runtime import Deployment, Tokens
from splitcomp.runtime import protocol as P
from splitcomp.runtime.handler import FrontGate

from .conftest import R20, DelayedTail

pytestmark = pytest.mark.timeout(180)

TOKEN = "ray-test-token-0123456789"
OTHER = "ray-other-token-0123456789"
N = 16
MAX_FRAME = 40_000  # an fp32 frame of ResNet-20's layer2 features is 32,8xx bytes


# -- FrontGate alone ---------------------------------------------------------------------
def _frame(rid: int, payload: bytes = b"x") -> bytes:
    return P.encode_request(rid, "r20", payload)


def test_gate_answers_a_retry_once_and_tells_payloads_apart() -> None:
    async def main() -> None:
        gate = FrontGate()
        runs: list[bytes] = []
        release = asyncio.Event()

        def runner(frame: bytes):
            async def run() -> bytes:
                runs.append(frame)
                await release.wait()
                return P.encode_error(P.parse_request(frame).request_id, P.ErrorCode.INTERNAL,
                                      frame.hex()) if frame.endswith(b"bad") else b"\x81" + frame
            return run

        a, b = _frame(1, b"first"), _frame(1, b"other")
        tasks = [asyncio.create_task(gate.submit(f, runner(f), who="c", identity=("c", "s")))
                 for f in (a, a, b)]
        await asyncio.sleep(0.01)
        release.set()
        got = await asyncio.gather(*tasks)
        assert got == [b"\x81" + a, b"\x81" + a, b"\x81" + b]
        assert runs == [a, b] and gate.replays == 1
        assert await gate.submit(a, runner(a), who="c", identity=("c", "s")) == b"\x81" + a
        assert len(runs) == 2  # kept after the answer
        assert await gate.submit(a, runner(a), who="c", identity=("c", "t")) == b"\x81" + a
        assert len(runs) == 3  # another session: its own request
        assert await gate.submit(a, runner(a), who="c", identity=None) == b"\x81" + a
        assert len(runs) == 4  # no session: never deduplicated
        bad = _frame(2, b"bad")
        for _ in range(2):  # errors are not kept
            assert P.parse_response(
                await gate.submit(bad, runner(bad), who="c", identity=("c", "s"))).code
        assert len(runs) == 6 and not gate.inflight.requests

    asyncio.run(main())


def test_gate_limits_each_client_in_flight() -> None:
    async def main() -> None:
        gate = FrontGate(max_inflight_per_client=2, max_inflight_bytes_per_client=100)
        release = asyncio.Event()

        async def run() -> bytes:
            await release.wait()
            return b"\x81ok"

        held = [asyncio.create_task(gate.submit(_frame(i), run, who="a", identity=None))
                for i in (1, 2)]
        await asyncio.sleep(0.01)
        over = P.parse_response(await gate.submit(_frame(3), run, who="a", identity=None))
        assert over.code == P.ErrorCode.OVERLOADED and "2 requests" in over.message
        other = asyncio.create_task(gate.submit(_frame(3), run, who="b", identity=None))
        await asyncio.sleep(0.01)
        big = P.parse_response(await gate.submit(_frame(4, bytes(100)), run, who="b",
                                                  identity=None))
        assert big.code == P.ErrorCode.OVERLOADED and "bytes in flight" in big.message
        assert P.parse_response(await gate.submit(b"SP junk", run, who="a", identity=None)
                                ).code == P.ErrorCode.BAD_FRAME
        release.set()
        assert await asyncio.gather(*held, other) == [b"\x81ok"] * 3
        assert not gate.inflight.requests and not gate.inflight.bytes and gate.refused == 2

    asyncio.run(main())


# -- Ray Serve ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(r20: R20) -> Iterator[tuple[ModuleType, str]]:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install .[ray])")
    import ray.cloudpickle

    from splitcomp.runtime import ray_backend as rb

    ray.cloudpickle.register_pickle_by_value(sys.modules[DelayedTail.__module__])
    deps = [Deployment("r20", r20.tail, codecs=["fp32"], max_batch_size=N),
            Deployment("slow", DelayedTail(r20.tail, 0.5), codecs=["fp32"], max_batch_size=N,
                       allowed_clients=["edge"])]
    tokens = Tokens({"edge": TOKEN, "other": OTHER})
    app = rb.build_app(deps, num_cpus=1, tokens=tokens, max_batch_size=N, max_wait_ms=200.0,
                       threads=1, max_frame_bytes=MAX_FRAME, max_inflight_per_client=N)
    try:
        url = rb.start(app, port=_free_port(), num_cpus=2, tokens=tokens,
                       max_frame_bytes=MAX_FRAME)
        rb.wait_ready(url, timeout_s=90, token=TOKEN)
        yield rb, url
    finally:
        rb.shutdown()


def _features(r20: R20, n: int, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [r20.features(torch.randn(1, 3, 32, 32)) for _ in range(n)]


def _post(rb: ModuleType, url: str, frame: bytes, token: str = TOKEN,
          session: str | None = None) -> P.Response:
    with rb.FrameClient(url, token, timeout_s=30, session=session) as c:
        status, body = c.post(frame)
    assert status == 200, body[:200]
    return P.parse_response(body)


def test_serve_batches_and_matches_local_tail(served: tuple[ModuleType, str], r20: R20) -> None:
    rb, url = served
    feats = _features(r20, N, 1)
    fp32 = codecs.get("fp32")
    frames = [P.encode_request(i + 1, "r20", fp32.encode(f)) for i, f in enumerate(feats)]
    with rb.FrameClient(url, timeout_s=10) as anon, \
            rb.FrameClient(url, "wrong-token-0123456789", timeout_s=10) as wrong:
        assert anon.post(frames[0])[0] == 401
        assert wrong.post(frames[0])[0] == 401
    with ThreadPoolExecutor(N) as pool:
        responses = list(pool.map(lambda f: _post(rb, url, f), frames, timeout=60))
    assert [r.request_id for r in responses] == list(range(1, N + 1))
    sizes = []
    for f, r in zip(feats, responses, strict=True):
        assert r.ok, (r.code, r.message)
        assert r.timing is not None and r.bitstream is not None
        sizes.append(r.timing.batch_size)
        got = codecs.decode(bytes(r.bitstream))
        got = got[0] if isinstance(got, (list, tuple)) else got
        torch.testing.assert_close(got, r20.reference(f, r.timing.batch_size),
                                   rtol=1e-5, atol=1e-5)
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    assert _post(rb, url, b"SP garbage").code == P.ErrorCode.BAD_FRAME


def _raw(url: str, request: bytes, then: bytes = b"") -> tuple[int, bytes]:
    """Send raw HTTP bytes (``then`` after a pause, unless the answer came first)."""
    u = http.client.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=20) as s:
        s.sendall(request)
        if then:
            s.settimeout(1.0)
            try:
                early = s.recv(65536)
            except TimeoutError:
                early = b""
            if early:
                return int(early.split()[1]), early
            s.settimeout(20)
            s.sendall(then)
        data = s.recv(65536)
    return int(data.split()[1]), data


def test_proxy_paths_need_a_token_and_bodies_are_bounded(
        served: tuple[ModuleType, str]) -> None:
    rb, url = served
    base = url.rsplit("/", 1)[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, headers, want in [("/-/routes", {}, 401), ("/-/routes", auth, 200),
                                ("/-/healthz", {}, 200), ("/nowhere", {}, 401),
                                ("/nowhere", auth, 404)]:
        u = http.client.urlsplit(base + path)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
        conn.request("GET", u.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == want, (path, headers, resp.status, body[:100])
        if want == 200 and path == "/-/routes":
            assert b"splitcomp" in body
    with rb.FrameClient(url, TOKEN, timeout_s=20) as c:
        assert c.post(bytes(MAX_FRAME + 1))[0] == 413  # from its Content-Length
    path = http.client.urlsplit(url).path
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n")
    chunk = f"{MAX_FRAME + 1:x}\r\n".encode() + bytes(MAX_FRAME + 1) + b"\r\n"
    # a chunked body past the limit: 413 while the body is still open (no final chunk)
    status, _ = _raw(url, head.encode() + chunk, then=b"0\r\n\r\n")
    assert status == 413
    unauthenticated = head.replace(f"Authorization: Bearer {TOKEN}\r\n", "")
    assert _raw(url, unauthenticated.encode() + chunk)[0] == 401


def test_allowed_clients_limits_and_retries(served: tuple[ModuleType, str], r20: R20) -> None:
    rb, url = served
    fp32 = codecs.get("fp32")
    feats = _features(r20, N + 4, 2)
    frames = [P.encode_request(100 + i, "slow", fp32.encode(f)) for i, f in enumerate(feats)]
    assert _post(rb, url, frames[0], token=OTHER).code == P.ErrorCode.UNAUTHORIZED
    # the slow tail holds N requests in flight for 0.5 s: the limit refuses the others
    with ThreadPoolExecutor(N + 4) as pool:
        got = list(pool.map(lambda f: _post(rb, url, f), frames, timeout=60))
    codes = [r.code for r in got]
    assert codes.count(P.ErrorCode.OVERLOADED) >= 1, codes
    assert all(r.ok for r in got if r.code != P.ErrorCode.OVERLOADED), codes
    # a retry (same session, id and bytes) while in flight and after: one run, one answer
    def post_raw(frame: bytes) -> bytes:
        with rb.FrameClient(url, TOKEN, timeout_s=30, session="retry-1") as c:
            status, body = c.post(frame)
        assert status == 200
        return body

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(post_raw, [frames[1], frames[1]], timeout=60)
    assert first == second and P.parse_response(first).ok  # its timing too: it ran once
    assert post_raw(frames[1]) == first
    other = P.encode_request(101, "slow", fp32.encode(feats[2]))  # same id, other bytes
    answer = P.parse_response(post_raw(other))
    assert answer.ok and answer.bitstream is not None
    got_t = codecs.decode(bytes(answer.bitstream))[0]
    torch.testing.assert_close(got_t, r20.reference(feats[2], answer.timing.batch_size),
                               rtol=1e-5, atol=1e-5)


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _listening() -> dict[int, str]:
    """Listening TCP sockets of this machine: inode -> local address."""
    out = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":
                continue
            hexaddr, port = f[1].split(":")
            raw = b"".join(bytes.fromhex(hexaddr[i:i + 8])[::-1]
                           for i in range(0, len(hexaddr), 8))
            out[int(f[9])] = f"{ipaddress.ip_address(raw)}:{int(port, 16)}"
    return out


def test_every_ray_port_listens_on_loopback(served: tuple[ModuleType, str]) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc")
    listening = _listening()
    found = {}
    for pid in _descendants(os.getpid()):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listening:
                    found[listening[inode]] = pid
    assert len(found) >= 5, found  # GCS, raylet, agents, proxy, replica...
    for addr in found:
        host = ipaddress.ip_address(addr.rsplit(":", 1)[0])
        host = getattr(host, "ipv4_mapped", None) or host
        assert host.is_loopback, (addr, found)
