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


def test_export_folds_a_client_adapter_into_the_head(tmp_path: Path, capsys) -> None:
    """``--adapter``: the exported head is the adapted one (input adapter, head, adapter),
    within fp32 tolerance of torch; edge.json names the adapter; a wrong cut is one line."""
    ort = pytest.importorskip("onnxruntime", reason="runs the ONNX head")
    import numpy as np
    import torch

    from splitcomp.data.transforms import CIFAR_EVAL
    from splitcomp.train import SplitRecord
    from splitcomp.train.adapters import (
        Adapter,
        AdapterCheckpoint,
        AdapterConfig,
        save_adapter,
    )
    torch.manual_seed(3)
    cut, inp = Adapter(32), Adapter(3, 8, 2)
    for a in (cut, inp):  # not the identity
        torch.nn.init.normal_(a.up.weight, std=0.1)
    save_adapter(AdapterCheckpoint("resnet20", "random", "layer2", cut.eval(),
                                   AdapterConfig(shift="contrast:3", place="both"),
                                   SplitRecord(0, 4, 0, "", []), input_adapter=inp.eval()),
                 tmp_path / "ad")
    outs = {}
    for name, extra in (("plain", []), ("adapted", ["--adapter", str(tmp_path / "ad")])):
        torch.manual_seed(0)  # --weights random: the same model both times
        assert main([*BASE, "--codec", "int8", *extra, "--out", str(tmp_path / name)]) == 0
        assert "onnx vs torch head: max |diff|" in capsys.readouterr().out
        outs[name] = tmp_path / name
    m = json.loads((outs["adapted"] / "edge.json").read_text())
    assert m["adapter"] == str(tmp_path / "ad")
    assert json.loads((outs["plain"] / "edge.json").read_text())["adapter"] is None

    def onnx(folder: Path, x: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(str(folder / "head.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    x = CIFAR_EVAL.normalize(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with torch.inference_mode():  # adapted head = cut adapter o plain head o input adapter
        want = cut(torch.from_numpy(onnx(outs["plain"], inp(x).numpy()))).numpy()
    got = onnx(outs["adapted"], x.numpy())
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    assert np.abs(got - onnx(outs["plain"], x.numpy())).max() > 1e-2  # not the identity
    capsys.readouterr()
    assert main([*BASE, "--split", "layer1", "--codec", "int8", "--adapter",
                 str(tmp_path / "ad"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter checkpoint" in err
