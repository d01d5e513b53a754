"""Compact per-token streams over a real server on 127.0.0.1: a session learns a template from
its own full streams, later ones carry 9 bytes of container (5 as session streams), and no
other session can use it."""

from __future__ import annotations

import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs.compact import TEMPLATES, session_stream, template_id
from splitcomp.codecs.container import template
from splitcomp.llm import EdgeHalf, greedy_unsplit
from splitcomp.runtime import ErrorCode
from splitcomp.runtime import protocol as P
from splitcomp.runtime.llm.client import RemoteLM
from splitcomp.runtime.llm.service import SESSION_TEMPLATES
from tests.codecs.registries import unregistered

from .test_server_sessions import SPLIT, TOKENS, _ask, _raw, serve  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def test_decode_steps_are_compact_and_exact(tiny_models, serve, prompt) -> None:  # noqa: F811
    model = tiny_models["llama_tiny"]
    srv = serve(model)
    want, _ = greedy_unsplit(model, prompt, 8)
    h = model.config.hidden_size
    with RemoteLM(model, SPLIT, srv.url, "lm", codec="fp16", token=TOKENS["alice"]) as lm:
        steps = list(lm.generate(prompt, 8))
        full = RemoteLM(model, SPLIT, srv.url, "lm", codec="fp16", token=TOKENS["bob"],
                        compact=False)
        with full:
            old = list(full.generate(prompt, 8))
    assert [s.token for s in steps] == [s.token for s in old] == want
    # the prefill's first stream is full and teaches the template; the rest are session
    # streams: 5 + payload
    assert steps[1].bytes_sent == old[1].bytes_sent - (len(codecs.get("fp16").encode(
        torch.zeros(1, 1, h))) - (2 * h + 5))
    assert steps[0].bytes_sent < old[0].bytes_sent
    assert lm.wire.stats.overhead < full.wire.stats.overhead


def test_a_session_uses_only_templates_it_learned(tiny_models, serve, prompt) -> None:  # noqa: F811
    model = tiny_models["llama_tiny"]
    srv = serve(model)
    edge = EdgeHalf(model, SPLIT)
    fp16 = codecs.get("fp16")
    h = model.config.hidden_size
    tid = template_id(template(fp16, (1, 1, h), torch.float32))
    hidden = edge.step(prompt)
    full = [fp16.encode(hidden[:, t : t + 1]) for t in range(len(prompt))]
    compact = [fp16.encode(hidden[:, t : t + 1], compact=True) for t in range(len(prompt))]
    assert all(len(c) == len(f) - (len(f) - 2 * h - 9) for c, f in zip(compact, full,
                                                                      strict=True))
    with unregistered(TEMPLATES, tid), _raw(srv, "alice") as ws, _raw(srv, "bob") as other:
        sid = _ask(ws, P.encode_llm_open(1, "lm")).llm.session
        sid2 = _ask(other, P.encode_llm_open(1, "lm")).llm.session
        # not taught yet: refused, typed, and the session is unchanged
        r = _ask(ws, P.encode_llm_step(2, sid, len(prompt), compact))
        assert r.code is ErrorCode.BAD_BITSTREAM and "not registered" in r.message
        # the first stream full, the others compact: the session learns it on the way (in
        # its own scope: the process registry still lacks it)
        r = _ask(ws, P.encode_llm_step(3, sid, len(prompt), full[:1] + compact[1:]))
        assert r.ok and r.llm.position == len(prompt)
        # another session (another client) cannot name it
        r2 = _ask(other, P.encode_llm_step(2, sid2, len(prompt), compact))
        assert r2.code is ErrorCode.BAD_BITSTREAM
        nxt = edge.step(torch.tensor([r.llm.token]))
        r = _ask(ws, P.encode_llm_step(4, sid, 1, [fp16.encode(nxt, compact=True)]))
        assert r.ok and r.llm.position == len(prompt) + 1
        # a session stream: its template implied by the session (the CRC picks it), so
        # another session, which has learned none, refuses it typed
        nxt = edge.step(torch.tensor([r.llm.token]))
        short = session_stream(fp16.encode(nxt, compact=True))
        assert len(short) == 2 * h + 5
        r2 = _ask(other, P.encode_llm_step(3, sid2, 1, [short]))
        assert r2.code is ErrorCode.BAD_BITSTREAM and "CRC" in r2.message
        r = _ask(ws, P.encode_llm_step(5, sid, 1, [short]))
        assert r.ok and r.llm.position == len(prompt) + 2
    assert SESSION_TEMPLATES >= 4
