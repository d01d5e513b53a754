"""``splitcomp lm-context``: a tokenwise context calibrated on a tiny LLM's edge half."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from splitcomp.cli import main  # noqa: E402
from splitcomp.codecs.tokenwise import TokenwiseContext, context_id  # noqa: E402


def test_lm_context_writes_the_printed_context(tmp_path, single_thread, capsys) -> None:
    text = tmp_path / "wiki.txt"
    text.write_text(" = Lobster = \n The lobster is a crustacean of the sea . " * 40)
    out = tmp_path / "contexts"
    assert main(["lm-context", "--model", "llama_tiny", "--split", "1", "--windows", "2",
                 "--window", "16", "--text", str(text), "--out", str(out)]) == 0
    (path,) = out.glob("tokenwise-*.sctx")
    data = path.read_bytes()
    cid = context_id(data)
    assert path.name == f"tokenwise-{cid:05x}.sctx"
    assert capsys.readouterr().out.strip() == f"context {cid} ({len(data)} bytes): {path}"
    assert TokenwiseContext.from_bytes(data).to_bytes() == data
