"""``splitcomp calibrate-lm`` (old name ``lm-context``): a tokenwise context calibrated on a
tiny LLM's edge half, written where ``--out`` says, and used by ``eval-lm`` through
``--param context=FILE`` with no other flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from splitcomp.cli import eval_lm, main  # noqa: E402
from splitcomp.codecs.tokenwise import CONTEXTS, TokenwiseContext, context_id  # noqa: E402

from .commands import run_command  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ARGS = ["--model", "llama_tiny", "--split", "1", "--windows", "2", "--window", "16"]


@pytest.fixture
def wiki(tmp_path: Path) -> Path:
    text = tmp_path / "wiki.txt"
    text.write_text(" = Lobster = \n The lobster is a crustacean of the sea . " * 40)
    return text


@pytest.mark.parametrize("command", ["calibrate-lm", "lm-context"])
def test_calibrate_lm_into_a_folder(command, wiki, tmp_path, capsys) -> None:
    out = tmp_path / "contexts"
    assert main([command, *ARGS, "--text", str(wiki), "--out", str(out)]) == 0
    (path,) = out.glob("tokenwise-*.sctx")
    ctx = TokenwiseContext.from_file_bytes(path.read_bytes())
    data = ctx.to_bytes()  # the wire bytes (what a server gets), named by their id
    cid = context_id(data)
    assert path.name == f"tokenwise-{cid:05x}.sctx" and ctx.shaping is not None
    extra = path.stat().st_size - len(data)
    assert capsys.readouterr().out.strip() == (
        f"context {cid} ({len(data)} bytes, {extra} more in the file: the encoder's shaping): "
        f"{path}")
    assert path.read_bytes() == ctx.file_bytes()


def test_a_short_text_calibrates_on_what_it_holds(wiki, tmp_path, capsys) -> None:
    out = tmp_path / "c.sctx"
    argv = ["calibrate-lm", "--model", "llama_tiny", "--split", "1", "--window", "16"]
    assert main([*argv, "--windows", "100000", "--text", str(wiki), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: the text holds" in err and "calibrating on those" in err
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a b")  # not even two windows: one line, exit 2
    assert main([*argv, "--text", str(tiny), "--out", str(tmp_path / "d.sctx")]) == 2
    assert "tokens" in capsys.readouterr().err


def test_predictor_shaping_and_allocation_by_default_and_without(wiki, tmp_path) -> None:
    sizes = {}
    for flags in (["--predict"], ["--no-predict"], ["--no-shape"], ["--no-predict", "--no-shape"],
                  ["--no-allocate"], ["--no-shape", "--no-allocate"]):
        out = tmp_path / f"{'_'.join(flags)}.sctx"  # without trellis: version 2 when unallocated
        assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(out), *flags,
                     "--no-trellis", "--no-temporal"]) == 0
        ctx = TokenwiseContext.from_file_bytes(out.read_bytes())
        assert (ctx.pred is not None) == ("--no-predict" not in flags)
        assert (ctx.shaping is not None) == ("--no-shape" not in flags)
        assert (ctx.alloc is not None) == ("--no-allocate" not in flags)
        sizes[tuple(flags)] = len(ctx.to_bytes()), out.stat().st_size
    default = tmp_path / "default.sctx"
    assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(default),
                 "--no-trellis", "--no-temporal"]) == 0
    assert default.read_bytes() == (tmp_path / "--predict.sctx").read_bytes()  # seeded
    c = 64  # llama_tiny's hidden size: C (C - 1) bytes of coefficients each
    assert sizes[("--predict",)][0] - sizes[("--no-predict",)][0] == c * (c - 1)
    assert sizes[("--no-shape",)][1] == sizes[("--no-shape",)][0]  # the file is the wire
    # allocation: 3 header bytes, the median code, 13 counts and 2C + 1 float32 weights
    assert sizes[("--predict",)][0] - sizes[("--no-allocate",)][0] == 2 + 1 + 26 + 4 * (2 * c + 1)
    shaped_file = sizes[("--predict",)][1] - sizes[("--predict",)][0]
    assert c * (c - 1) < shaped_file < c * (c - 1) + 32  # the feedback, sealed, and a trailer


def test_trellis_by_default_and_without(wiki, tmp_path) -> None:
    ctxs = {}
    for name, flags in (("without", ["--no-trellis"]), ("default", []),
                        ("bare", ["--trellis", "--no-allocate", "--no-predict"])):
        out = tmp_path / f"{name}.sctx"
        assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(out), *flags,
                     "--no-temporal"]) == 0
        ctxs[name] = TokenwiseContext.from_file_bytes(out.read_bytes())
    assert not ctxs["without"].trellis and ctxs["default"].trellis and ctxs["bare"].trellis
    a, b = ctxs["without"].to_bytes(), ctxs["default"].to_bytes()  # flags (bit 1), CRC apart
    assert a[5] | 2 == b[5] and a[:5] + a[6:-4] == b[:5] + b[6:-4]
    assert ctxs["bare"].pred is None and ctxs["bare"].alloc is None
    assert ctxs["bare"].to_bytes()[4:7] == b"\3\2\0"


def test_previous_token_prediction_by_default_and_without(wiki, tmp_path) -> None:
    """``--temporal`` (the default) adds flags bit 2 and the guess's coefficients (f32 ref,
    C f16 factors and means), and fits the rest on the residuals; ``--no-temporal`` not.
    Its low-rank term (flags bit 3, the rank byte, C x r f16 twice) has at most as many
    directions as calibration pairs allow (one per 64); ``--temporal-rank 0`` leaves it out.
    """
    ctxs = {}
    for name, flags in (("without", ["--no-temporal"]), ("default", []),
                        ("diagonal", ["--temporal-rank", "0"])):
        out = tmp_path / f"{name}.sctx"
        assert main(["calibrate-lm", *ARGS, "--window", "160", "--text", str(wiki), "--out",
                     str(out), *flags]) == 0
        ctxs[name] = TokenwiseContext.from_file_bytes(out.read_bytes())
    a, b = ctxs["without"].to_bytes(), ctxs["diagonal"].to_bytes()
    assert ctxs["without"].temporal is None and ctxs["diagonal"].temporal.rank == 0
    assert b[5] == a[5] | 4 and len(b) - len(a) == 4 + 4 * 64
    assert ctxs["diagonal"].scale < ctxs["without"].scale  # residuals spread less
    low, rank = ctxs["default"].to_bytes(), ctxs["default"].temporal.rank
    assert rank == 2 * 159 // 64 and low[5] == b[5] | 8 and low[7] == rank
    assert len(low) - len(b) == 1 + 4 * 64 * rank
    assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(tmp_path / "x.sctx"),
                 "--temporal-rank", "256"]) == 2


def test_calibrate_lm_to_a_file_then_eval_lm_with_its_path(wiki, tmp_path, capsys) -> None:
    ctx = tmp_path / "sub" / "ctx.sctx"
    assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(ctx)]) == 0
    cid = TokenwiseContext.from_file_bytes(ctx.read_bytes()).context_id
    assert capsys.readouterr().out.strip().startswith(f"context {cid} (")
    # the file exists now: replaced only with --force
    assert main(["calibrate-lm", *ARGS, "--text", str(wiki), "--out", str(ctx)]) == 2
    assert "--force" in capsys.readouterr().err
    CONTEXTS.remove(cid)  # only the file can make it known
    out = tmp_path / "r.json"
    assert run_command(eval_lm, [
        "--model", "llama_tiny", "--split", "1", "--codec", "tokenwise", "--param",
        f"context={ctx}", "--param", "level=0", "--windows", "2", "--window", "32", "--items",
        "0", "--gen-prompts", "2", "--gen-tokens", "8", "--wikitext", str(wiki),
        "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["codec"] == "tokenwise" and r["params"]["context"] == cid
    # context mode: a few bits per element (self-contained rows cost far more)
    assert r["bits_per_element"] < 8 and r["gen_prompts"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["eval-lm", "--model", "llama_tiny", "--split", "1", "--codec", "tokenwise",
      "--param", "context=/no/such.sctx"], "context=/no/such.sctx: no such file"),
    (["eval-lm", "--model", "llama_tiny", "--split", "1", "--codec", "tokenwise",
      "--param", "context={junk}"], "context="),
    (["calibrate-lm", *ARGS, "--split", "9", "--out", "{tmp}/c.sctx", "--text", "{wiki}"],
     "split 9"),
])
def test_context_mistakes(argv, message, wiki, tmp_path, capsys) -> None:
    junk = tmp_path / "junk.sctx"
    junk.write_bytes(b"not a context")
    argv = [a.format(junk=junk, tmp=tmp_path, wiki=wiki) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitcomp: error:") and message in err and "\n" not in err
