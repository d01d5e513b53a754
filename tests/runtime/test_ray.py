"""``--backend ray``: the tail handler as a Ray Serve deployment, brought up locally, sent 16
concurrent requests (batched by ``@serve.batch``) and shut down. Skipped without the extra."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install .[ray])")

from splitcomp import codecs  # noqa: E402
from splitcomp.runtime import Deployment, Tokens  # noqa: E402
from splitcomp.runtime import protocol as P  # noqa: E402
from splitcomp.runtime import ray_backend as rb  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TOKEN = "ray-test-token-0123456789"
N = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_batches_and_matches_local_tail(r20) -> None:
    torch.manual_seed(1)
    feats = [r20.features(torch.randn(1, 3, 32, 32)) for _ in range(N)]
    fp32 = codecs.get("fp32")
    frames = [P.encode_request(i + 1, "r20", fp32.encode(f)) for i, f in enumerate(feats)]
    dep = Deployment("r20", r20.tail, codecs=["fp32"], max_batch_size=N)
    t0 = time.monotonic()
    app = rb.build_app([dep], num_cpus=1, tokens=Tokens({"edge": TOKEN}), max_batch_size=N,
                       max_wait_ms=200.0, threads=1)
    try:
        url = rb.start(app, port=_free_port(), num_cpus=2)
        rb.wait_ready(url, timeout_s=60, token=TOKEN)

        with rb.FrameClient(url, timeout_s=10) as anon, \
                rb.FrameClient(url, "wrong-token-0123456789", timeout_s=10) as wrong:
            assert anon.post(frames[0])[0] == 401
            assert wrong.post(frames[0])[0] == 401

        def send(frame: bytes) -> P.Response:
            with rb.FrameClient(url, TOKEN, timeout_s=30) as c:
                status, body = c.post(frame)
            assert status == 200, body[:200]
            return P.parse_response(body)

        with ThreadPoolExecutor(N) as pool:
            responses = list(pool.map(send, frames, timeout=60))
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

        bad = send(b"SP garbage")
        assert bad.code == P.ErrorCode.BAD_FRAME
    finally:
        rb.shutdown()
    print(f"ray serve test: batch sizes {sorted(sizes)}, {time.monotonic() - t0:.1f} s")
