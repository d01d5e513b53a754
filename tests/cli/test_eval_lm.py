"""The ``eval-lm`` command module on a tiny model and small files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from splitcomp.cli import eval_lm  # noqa: E402

from .commands import run_command  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest

KEYS = {"model", "split", "codec", "params", "ppl_baseline", "ppl", "ppl_increase_pct",
        "hellaswag_baseline", "hellaswag", "bits_per_element", "bytes_per_token"}


@pytest.fixture
def texts(tmp_path: Path) -> tuple[Path, Path]:
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" = Lobster = \n The lobster is a crustacean of the sea . " * 40)
    items = []
    for i in range(3):
        items += [f"Cooking: A man cuts {i} onions. he", str(i % 4), "cries.", "sings a song.",
                  "puts them in a pan.", "leaves [title] the kitchen."]
    hs = tmp_path / "hs.txt"
    hs.write_text("\n".join(items) + "\n")
    return wiki, hs


def test_eval_lm_json(texts, tmp_path) -> None:
    wiki, hs = texts
    out = tmp_path / "r.json"
    argv = ["--model", "llama_tiny", "--split", "2", "--codec", "int8", "--windows", "3",
            "--window", "32", "--items", "3", "--wikitext", str(wiki), "--hellaswag", str(hs),
            "--gen-prompts", "0", "--json", str(out)]
    assert run_command(eval_lm, argv) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r) and r["gen_prompts"] == 0 and r["gen_agreement"] is None
    assert r["model"] == "llama_tiny" and r["split"] == 2 and r["codec"] == "int8"
    assert r["ppl_tokens"] == 3 * 31 and r["hellaswag_items"] == 3
    assert r["kl_mean"] >= 0 and 0 <= r["top1_agreement"] <= 1
    assert 0 <= r["hellaswag"] <= 1 and 0 <= r["hellaswag_baseline"] <= 1
    # one bitstream of 64 int8 values (+ scale, container) per token
    assert r["bytes_per_token"] > 64 and r["bits_per_element"] == 8 * r["bytes_per_token"] / 64


def test_eval_lm_target_search(texts, tmp_path) -> None:
    wiki, _ = texts
    out = tmp_path / "r.json"
    argv = ["--model", "gpt2_tiny", "--split", "1", "--codec", "rans", "--windows", "2",
            "--window", "32", "--calib-windows", "2", "--items", "0", "--wikitext", str(wiki),
            "--target-ppl-increase", "1.0", "--gen-prompts", "0", "--calib-gen-prompts", "0",
            "--json", str(out)]
    assert run_command(eval_lm, argv) == 0
    r = json.loads(out.read_text())
    cal = r["calibration"]
    assert r["params"]["bits"] == cal["quality"] and r["hellaswag"] is None
    tried = [t["quality"] for t in cal["tried"]]
    assert tried == sorted(tried, reverse=True)  # from the highest rate down
    assert cal["confidence"] == 0.9  # the default: a margin over the windows' own increase
    assert all(t["ppl_increase_bound_pct"] >= t["ppl_increase_pct"] for t in cal["tried"])
    meets = [t["ppl_increase_bound_pct"] <= 1.0 for t in cal["tried"]]
    assert all(meets[:-1])  # it stops at the first miss
    assert cal["met"] == meets[0]
    passed = [q for q, m in zip(tried, meets, strict=True) if m]
    assert cal["quality"] == (min(passed) if passed else tried[0])


def test_eval_lm_rejects_missing_file(tmp_path) -> None:
    with pytest.raises(SystemExit, match="WikiText"):
        run_command(eval_lm, ["--model", "llama_tiny", "--split", "1", "--items", "0",
                              "--wikitext", str(tmp_path / "absent.txt")])


def test_param_parsing() -> None:
    from splitcomp.cli._llm_args import parse_params

    assert parse_params("int8", ["per_channel=true", "axis=-1"]) == {"per_channel": True,
                                                                     "axis": -1}
    with pytest.raises(SystemExit, match="no parameter"):
        parse_params("int8", ["bits=3"])


GEN = ["--model", "llama_tiny", "--split", "1", "--windows", "1", "--window", "32",
       "--items", "0", "--gen-tokens", "12"]


def test_eval_lm_generation_figures(texts, tmp_path) -> None:
    """fp32 generates exactly what the whole model does; a coarse codec does not, and says
    so (agreement, first divergence, a warning under the floor)."""
    wiki, _ = texts
    figures = {}
    for codec, params in (("fp32", []), ("rans", ["--param", "bits=2"])):
        out = tmp_path / f"{codec}.json"
        assert run_command(eval_lm, [*GEN, "--codec", codec, *params, "--gen-prompts", "6",
                                     "--wikitext", str(wiki), "--json", str(out)]) == 0
        figures[codec] = json.loads(out.read_text())
    exact, coarse = figures["fp32"], figures["rans"]
    for r in (exact, coarse):
        assert r["gen_prompts"] == 6 and r["gen_tokens"] == 12 and r["min_agreement"] == 0.9
        assert r["gen_exact_items"] == 3 and r["gen_exact_match_baseline"] is not None
    assert exact["gen_agreement"] == 1.0 and exact["first_divergence_mean"] == 12
    assert exact["gen_exact_match"] == exact["gen_exact_match_baseline"]
    assert coarse["gen_agreement"] < 0.5 and coarse["first_divergence_mean"] < 6


def test_target_search_refuses_settings_below_the_agreement_floor(texts, tmp_path) -> None:
    """With no perplexity target to speak of, the agreement floor alone stops the walk: the
    chosen setting and every one above it agree on the calibration prompts."""
    wiki, _ = texts
    out = tmp_path / "r.json"
    argv = [*GEN, "--codec", "rans", "--calib-windows", "1", "--target-ppl-increase", "1e9",
            "--confidence", "0.5", "--gen-prompts", "2", "--calib-gen-prompts", "4",
            "--min-agreement", "0.95",
            "--wikitext", str(wiki), "--json", str(out)]
    assert run_command(eval_lm, argv) == 0
    r = json.loads(out.read_text())
    cal = r["calibration"]
    assert cal["min_agreement"] == 0.95 and cal["gen_prompts"] == 4
    agree = [t["gen_agreement"] for t in cal["tried"]]
    assert all(a >= 0.95 for a in agree[:-1]) and agree[-1] < 0.95  # stopped by the floor
    assert cal["quality"] == cal["tried"][-2]["quality"] > 2 and cal["met"]
    assert r["params"]["bits"] == cal["quality"] and r["gen_prompts"] == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--gen-prompts", "49"], "prompt set has 48"),
    (["--gen-prompts", "40", "--target-ppl-increase", "1"], "must not overlap"),
    (["--min-agreement", "1.5"], "a share"),
    (["--gen-tokens", "0"], "--gen-tokens"),
    (["--confidence", "1"], "a probability"),
    (["--target-ppl-increase", "1", "--calib-windows", "1"], "--calib-windows 2 or more"),
])
def test_generation_option_mistakes(extra, message) -> None:
    with pytest.raises(SystemExit, match=message):
        run_command(eval_lm, ["--model", "llama_tiny", "--split", "1", "--codec", "rans",
                              "--items", "0", *extra])


def test_context_params_take_ids_or_files(tmp_path) -> None:
    import numpy as np

    from splitcomp.cli._llm_args import resolve_context_params
    from splitcomp.codecs.tokenwise import CONTEXTS, calibrate, save_context

    assert resolve_context_params("tokenwise", ["context=5", "level=1"]) == ["context=5",
                                                                            "level=1"]
    assert resolve_context_params("rans", ["bits=4"]) == ["bits=4"]
    with pytest.raises(SystemExit, match="no such file"):
        resolve_context_params("tokenwise", [f"context={tmp_path / 'none.sctx'}"])
    ctx = calibrate(np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32))
    path = save_context(ctx, tmp_path)
    cid = CONTEXTS.key_of(ctx)
    CONTEXTS.remove(cid)
    assert resolve_context_params("tokenwise", [f"context={path}"]) == [f"context={cid}"]
    assert CONTEXTS.get(cid) is not None  # loaded and registered
