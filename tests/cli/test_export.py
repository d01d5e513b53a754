"""``splitcomp export``: a random-weight ResNet-20 head exported to ONNX with its edge.json;
each mistake is one line on stderr and status 2, before any work, leaving files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitcomp.cli import main

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(240)]
pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript")

BASE = ["export", "--model", "resnet20", "--split", "layer2", "--weights", "random"]


def test_export_writes_the_head_and_edge_json(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="the check runs the ONNX head")
    out = tmp_path / "r20"
    assert main([*BASE, "--codec", "rans", "--param", "bits=6", "--deployment", "r20-edge",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnx vs torch head: max |diff|" in text
    m = json.loads((out / "edge.json").read_text())
    assert (out / "head.onnx").stat().st_size > 10_000
    assert m["codec"] == {"name": "rans", "params": {"bits": 6, "clip": 0.99, "coder": "ans"},
                          "compact": False, "tables": None, "template": None}
    assert m["deployment"] == "r20-edge" and m["split"] == "layer2"
    assert m["outputs"] == [{"name": "crossing0", "shape": [32, 16, 16], "dtype": "float32",
                             "module": m["outputs"][0]["module"]}]
    # a second export into the same folder needs --force
    assert main([*BASE, "--codec", "rans", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert json.loads((out / "edge.json").read_text())["codec"]["params"]["bits"] == 6


@pytest.mark.parametrize(("argv", "mention"), [
    (["--codec", "slicer", "--model", "resnet2"], "no such model"),
    (["--codec", "slicer", "--split", "layer9"], "--split layer9"),
    (["--codec", "slicr"], "no such codec"),
    (["--codec", "slicer", "--param", "nope=1"], "has no parameter 'nope'"),
    (["--codec", "rans", "--param", "bits=x"], "is not an int"),
    (["--codec", "slicer", "--format", "tflite"], "--format tflite"),
    (["--codec", "slicer", "--format", "onnx,onnx"], "at most once"),
    ([], "needs --model, --split and --codec"),
    (["--checkpoint", "{tmp}/nowhere"], "not a checkpoint folder"),
    (["--exit", "{tmp}/nowhere"], "not an exit checkpoint folder"),
    (["--codec", "slicer", "--out", "{tmp}/full"], "exists and is not empty"),
    (["--codec", "slicer", "--out", "{tmp}/file.txt"], "is a file, not a folder"),
])
def test_a_mistake_is_one_line_and_status_2(argv: list[str], mention: str, tmp_path: Path,
                                            capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    (tmp_path / "file.txt").write_text("keep")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "new")]
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitcomp: error: ") and err.count("\n") == 1, err
    assert mention in err
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]


def test_export_pte_beside_onnx(tmp_path: Path, capsys) -> None:
    """ExecuTorch as a second format: checked against torch by its own runtime."""
    pytest.importorskip("executorch", reason="--format pte needs: pip install executorch")
    out = tmp_path / "both"
    assert main([*BASE, "--codec", "slicer", "--format", "onnx,pte", "--out", str(out)]) == 0
    assert "pte vs torch head: max |diff|" in capsys.readouterr().out
    m = json.loads((out / "edge.json").read_text())
    assert m["head"] == "head.onnx" and m["extra_formats"] == {"pte": "head.pte"}
    assert (out / "head.pte").stat().st_size > 10_000
