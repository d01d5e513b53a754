"""LLM sessions on the Ray Serve backend: the same service seam as the embedded server
(``handle_frames``), sessions bound to the bearer token's client, greedy tokens equal to the
unsplit model. Brings Ray up locally; skipped without the ray extra."""

from __future__ import annotations

import socket

import pytest
import torch

pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install .[ray])")

from splitcomp import codecs  # noqa: E402
from splitcomp.llm import EdgeHalf, ServerHalf, greedy_unsplit  # noqa: E402
from splitcomp.runtime import ErrorCode, Tokens  # noqa: E402
from splitcomp.runtime import protocol as P  # noqa: E402
from splitcomp.runtime import ray_backend as rb  # noqa: E402
from splitcomp.runtime.llm import LLMDeployment  # noqa: E402
from splitcomp.zoo import create_model  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
SPLIT = 2


def _services() -> list[LLMDeployment]:
    """Built inside the replica (a deployment holds sessions and weak references: it is made
    where it runs, not pickled)."""
    return [LLMDeployment("lm", ServerHalf(create_model("llama_tiny"), SPLIT))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llm_sessions_on_ray_match_the_unsplit_model(prompt) -> None:
    model = create_model("llama_tiny")
    want, _ = greedy_unsplit(model, prompt, 6)
    with pytest.raises(ValueError, match="one replica"):
        rb.build_app(_services, num_replicas=2, llm=True)
    app = rb.build_app(_services, num_cpus=1, llm=True, tokens=Tokens(TOKENS),
                       max_batch_size=8, max_wait_ms=2.0, threads=1)
    fp32 = codecs.get("fp32")
    try:
        url = rb.start(app, port=_free_port(), num_cpus=2)
        rb.wait_ready(url, timeout_s=60, token=TOKENS["alice"])
        with rb.FrameClient(url, TOKENS["alice"], timeout_s=30) as alice, \
                rb.FrameClient(url, TOKENS["bob"], timeout_s=30) as bob:

            def ask(client: rb.FrameClient, frame: bytes) -> P.Response:
                status, body = client.post(frame)
                assert status == 200, body[:200]
                return P.parse_response(body)

            opened = ask(alice, P.encode_llm_open(1, "lm")).llm
            assert isinstance(opened, P.LLMOpened) and opened.split == SPLIT
            edge = EdgeHalf(model, SPLIT)
            ids, got = prompt, []
            for i in range(6):
                hidden = edge.step(ids)
                frame = P.encode_llm_step(10 + i, opened.session, hidden.shape[1],
                                          [fp32.encode(hidden)])
                if i == 1:  # another client cannot use the session
                    assert ask(bob, frame).code is ErrorCode.SESSION_NOT_FOUND
                r = ask(alice, frame)
                assert r.ok, (r.code, r.message)
                got.append(r.llm.token)
                ids = torch.tensor([r.llm.token])
            assert got == want
            closed = ask(alice, P.encode_llm_close(20, opened.session)).llm
            assert closed == P.LLMClosed(len(prompt) + 5)
            assert ask(alice, P.encode_llm_open(21, "nope")).code is ErrorCode.UNKNOWN_DEPLOYMENT
    finally:
        rb.shutdown()
