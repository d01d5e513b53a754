"""The ``generate`` command module on a tiny model (embedded: both halves here)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("transformers")

from splitcomp.cli import generate  # noqa: E402
from splitcomp.cli.serve import read_listening_url  # noqa: E402

from .commands import run_command  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest


def test_generate_streams_and_reports(capsys, tmp_path) -> None:
    out = tmp_path / "g.json"
    assert run_command(generate, ["--model", "llama_tiny", "--split", "2", "--codec", "fp16",
                                  "--max-new-tokens", "6", "--json", str(out), "hello"]) == 0
    r = json.loads(out.read_text())
    assert r["prompt_tokens"] == 5 and r["new_tokens"] == 6
    per_token = r["bytes_per_token"]
    # fp16: every token's payload the same size; the first stream full, then session streams
    assert per_token == 2 * 64 + 5
    assert 5 * per_token < r["prefill_bytes"] < 5 * per_token + 20
    assert "B/token" in capsys.readouterr().err



@contextlib.contextmanager
def _serve(*argv: str) -> Iterator[str]:
    """A ``splitcomp serve`` process (its own context registry, as a real server has); its
    URL."""
    proc = subprocess.Popen([sys.executable, "-m", "splitcomp.cli.serve", *argv, "--port", "0",
                             "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = read_listening_url(proc.stdout, max_lines=20)
        if url is None:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"serve {' '.join(argv)}: {proc.stderr.read()[-2000:]}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.timeout(180)
def test_generate_with_a_context_file_against_a_real_server(capsys, tmp_path) -> None:
    """``--param context=FILE`` on both commands, no other flag: ``generate`` loads the file
    and names the context; a server started with the same flag holds it, so nothing is
    uploaded at OPEN; a server without it gets it once. The tokens are the embedded run's."""
    from splitcomp.cli import main

    text = tmp_path / "t.txt"
    text.write_text(" = Lobster = \n The lobster is a crustacean of the sea . " * 40)
    ctx = tmp_path / "ctx.sctx"
    assert main(["calibrate-lm", "--model", "llama_tiny", "--split", "1", "--windows", "2",
                 "--window", "16", "--text", str(text), "--out", str(ctx)]) == 0
    capsys.readouterr()

    def run(*extra: str) -> tuple[str, dict]:
        out = tmp_path / "g.json"
        argv = ["--model", "llama_tiny", "--split", "1", "--codec", "tokenwise", "--param",
                f"context={ctx}", "--max-new-tokens", "8", "--json", str(out), "--force",
                *extra, "hello"]
        assert run_command(generate, argv) == 0
        return capsys.readouterr().out, json.loads(out.read_text())

    text_here, embedded = run()
    assert embedded["new_tokens"] == 8 and embedded["bits_per_element"] < 8
    llm = ("--llm", "llama_tiny", "--llm-split", "1")
    with _serve(*llm, "--param", f"context={ctx}") as holding, _serve(*llm) as bare:
        got, held = run("--server", holding, "--deployment", "llama_tiny")
        assert got == text_here and held["context_bytes"] == 0
        assert held["prefill_bytes"] == embedded["prefill_bytes"]
        got, sent = run("--server", bare, "--deployment", "llama_tiny")
        # the context's bytes go up, not the file's encoder-only shaping section
        from splitcomp.codecs.tokenwise import TokenwiseContext

        wire = TokenwiseContext.from_file_bytes(ctx.read_bytes()).to_bytes()
        assert len(wire) < ctx.stat().st_size
        assert got == text_here and sent["context_bytes"] == len(wire)

def test_serve_param_takes_only_a_context_file(tmp_path) -> None:
    import argparse

    from splitcomp.cli import serve

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    for bad, message in ((["--param", "level=3"], "only context=FILE"),
                         (["--param", "context=7"], "only context=FILE"),
                         (["--param", f"context={tmp_path / 'none.sctx'}"], "none.sctx")):
        with pytest.raises(SystemExit, match=message):
            serve.build_server(p.parse_args(["--llm", "llama_tiny", "--llm-split", "1",
                                             "--port", "0", *bad]))
