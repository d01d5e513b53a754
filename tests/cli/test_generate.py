"""The ``generate`` command module on a tiny model (embedded: both halves here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from splitcomp.cli import generate  # noqa: E402

from .commands import run_command  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest


def test_generate_streams_and_reports(capsys, tmp_path) -> None:
    out = tmp_path / "g.json"
    assert run_command(generate, ["--model", "llama_tiny", "--split", "2", "--codec", "fp16",
                                  "--max-new-tokens", "6", "--json", str(out), "hello"]) == 0
    r = json.loads(out.read_text())
    assert r["prompt_tokens"] == 5 and r["new_tokens"] == 6
    per_token = r["bytes_per_token"]
    assert r["prefill_bytes"] == 5 * per_token  # fp16: every token's bitstream the same size
    assert 2 * 64 < per_token < 2 * 64 + 32
    assert "B/token" in capsys.readouterr().err
