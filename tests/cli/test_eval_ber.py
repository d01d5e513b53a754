"""``splitcomp eval --ber``: every stream through a bit-flipping link, rejected streams lost
(scored wrong), ``--resilient`` streams concealed slice by slice; the codec path and the
checkpoint path, seeded and reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitcomp.cli import main
from tests.train.tiny import tiny_checkpoint

KEYS = {"ber", "top1", "drop_pp", "requests_lost", "bytes_per_sample", "concealed_slices",
        "top1_clean", "ber_drop_pp", "top1_baseline", "streams_hit"}


def _eval(tmp_path: Path, name: str, *argv: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", *argv, "--no-progress", "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def codec_args(installed_package) -> list[str]:
    installed_package("foolbox")
    return ["--model", "resnet20", "--weights", "random", "--data", "foolbox-cifar10",
            "--split", "layer1", "--codec", "int8"]


def test_plain_streams_are_lost_resilient_ones_concealed(tmp_path, codec_args,
                                                         single_thread) -> None:
    plain = _eval(tmp_path, "plain", *codec_args, "--ber", "1e-4")
    resilient = _eval(tmp_path, "res", *codec_args, "--ber", "1e-4", "--resilient",
                      "--slices", "16")
    for rep in (plain, resilient):
        assert KEYS <= set(rep) and rep["n_images"] == 20 and rep["ber"] == 1e-4
        assert rep["requests_lost"] <= rep["streams_hit"]
        assert rep["top1"] == pytest.approx(rep["top1_clean"] - rep["ber_drop_pp"])
    assert plain["requests_lost"] == plain["streams_hit"] > 10  # 16 KB streams: all hit
    assert plain["concealed_slices"] == 0 and plain["codec"] == "int8"
    assert resilient["codec"] == "resilient" and resilient["params"]["inner"] == "int8"
    assert resilient["requests_lost"] < plain["requests_lost"]
    assert resilient["concealed_slices"] > 0
    assert resilient["bytes_per_sample"] > plain["bytes_per_sample"]
    again = _eval(tmp_path, "again", *codec_args, "--ber", "1e-4", "--resilient",
                  "--slices", "16")
    same = ("requests_lost", "concealed_slices", "streams_hit", "bytes_per_sample")
    assert {k: again[k] for k in same} == {k: resilient[k] for k in same}  # seeded errors


def test_no_errors_no_losses(tmp_path, codec_args, single_thread) -> None:
    rep = _eval(tmp_path, "clean", *codec_args, "--resilient", "--limit", "6")
    assert rep["ber"] == 0.0 and rep["requests_lost"] == rep["concealed_slices"] == 0
    assert rep["top1"] == rep["top1_clean"]


def test_bad_options_are_one_line_errors(codec_args, capsys) -> None:
    assert main(["eval", *codec_args, "--ber", "1.5", "--no-progress"]) == 2
    assert "--ber" in capsys.readouterr().err
    assert main(["eval", *codec_args[:-1], "resilient", "--resilient", "--no-progress"]) == 2
    assert "--codec resilient" in capsys.readouterr().err


def test_checkpoint_over_a_noisy_link(tmp_path, single_thread) -> None:
    data, ck = tiny_checkpoint(tmp_path)
    args = ["--checkpoint", str(ck), "--data", str(data)]
    plain = _eval(tmp_path, "ck_plain", *args, "--ber", "3e-3")
    res = _eval(tmp_path, "ck_res", *args, "--ber", "3e-3", "--resilient", "--slices", "4")
    clean = _eval(tmp_path, "ck_clean", *args, "--resilient", "--slices", "4")
    for rep in (plain, res, clean):
        assert KEYS <= set(rep) and rep["n_eval"] == 24
    assert plain["resilient"] is False and res["resilient"] is True and res["slices"] == 4
    assert plain["requests_lost"] > res["requests_lost"]
    assert res["concealed_slices"] > 0
    assert clean["requests_lost"] == clean["concealed_slices"] == 0
    assert clean["top1"] == clean["top1_clean"] == res["top1_clean"]
    baseline = _eval(tmp_path, "ck", *args)
    assert clean["top1_baseline"] == baseline["top1_baseline"]
    assert plain["top1_clean"] == baseline["top1"]  # the same compact streams, no errors
    assert plain["bytes_per_sample"] == baseline["bytes_per_sample"]
