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
            "--json", str(out)]
    assert run_command(eval_lm, argv) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r)
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
            "--target-ppl-increase", "1.0", "--json", str(out)]
    assert run_command(eval_lm, argv) == 0
    r = json.loads(out.read_text())
    cal = r["calibration"]
    assert r["params"]["bits"] == cal["quality"] and r["hellaswag"] is None
    tried = [t["quality"] for t in cal["tried"]]
    assert tried == sorted(tried, reverse=True)  # from the highest rate down
    meets = [t["ppl_increase_pct"] <= 1.0 for t in cal["tried"]]
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
