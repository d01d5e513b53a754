"""``splitcomp report`` end to end on shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitcomp.cli import main

pytest.importorskip("matplotlib", reason="the report draws with matplotlib (splitcomp[plot])")


@pytest.mark.requires_shared_data
def test_cli_end_to_end_on_cifar(tmp_path: Path, single_thread: None) -> None:
    args = ["report", "--model", "resnet20", "--split", "layer2", "--codecs", "fp16", "int8",
            "--input-codecs", "webp", "--limit", "40", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    (rep,) = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_images"] == 40 and rep["raw_input_bytes"] == 3072
    (split,) = rep["splits"]
    assert split["encoder"]["head_params"] > 0 and split["encoder"]["head_flops"] > 0
    assert [r["codec"] for r in split["features"]] == ["fp16", "int8"]
    assert split["features"][0]["top1"] == pytest.approx(rep["baseline"])
    assert split["baseline"] == pytest.approx(rep["baseline"])  # tail(head(x)) == model(x)
    assert {r["codec"] for r in rep["inputs"]} == {"webp"}
    assert (tmp_path / "resnet20_layer2.png").exists()
    assert "report --model resnet20" in (tmp_path / "report.md").read_text()
