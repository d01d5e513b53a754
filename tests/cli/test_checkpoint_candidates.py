"""Trained checkpoints beside the training-free codecs: ``splitcomp report --checkpoint`` and
``splitcomp plan --checkpoint`` on a tiny checkpoint (random resnet20, 48 random images, 24 of
them trained on), and ``serve --plan`` refusing a plan that chose one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from splitcomp.cli import main, serve
from splitcomp.plan import load_plan
from tests.train.tiny import image_folder, tiny_checkpoint

from .commands import parse_args

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, checkpoint folder at layer2)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ck"))


def report_args(data: Path, out: Path, *ckpts: Path) -> list[str]:
    words = ["report", "--model", "resnet20", "--split", "layer1", "--data", str(data),
             "--codecs", "fp16", "int8", "--input-codecs", "jpeg", "--out", str(out),
             "--no-progress"]
    for c in ckpts:
        words += ["--checkpoint", str(c)]
    return words


def test_report_rows_of_a_checkpoint_on_its_eval_part(trained, tmp_path, single_thread
                                                      ) -> None:
    pytest.importorskip("matplotlib")
    data, ck = trained
    assert main(report_args(data, tmp_path, ck)) == 0
    (rep,) = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_images"] == 24  # the eval part only, for every row
    assert rep["images_note"].startswith("images: the eval part of the checkpoint's split, 24")
    cuts = {s["split"]: s for s in rep["splits"]}
    assert set(cuts) == {"layer1", "layer2"}  # the checkpoint's cut added
    assert cuts["layer1"]["trained"] == []
    (row,) = cuts["layer2"]["trained"]
    assert row["n_eval"] == 24 and row["n_train"] == 24 and row["checkpoint"] == str(ck)
    assert row["top1_baseline"] == pytest.approx(rep["baseline"])  # the same teacher, images
    assert row["drop_pp"] == pytest.approx(rep["baseline"] - row["top1"])
    assert [r["codec"] for r in cuts["layer2"]["features"]] == ["fp16", "int8"]
    md = (tmp_path / "report.md").read_text()
    assert "Images: the eval part of the checkpoint's split, 24 images" in md
    assert f"| ck (C=8, stride 2, beta=2) | {row['bytes_per_sample']:,.1f} |" in md
    assert "split layer2, trained bottleneck" in md and "split layer2 + trained bottleneck" in md
    assert "--checkpoint" in md and (tmp_path / "resnet20_layer2.png").exists()


def test_report_refuses_trained_on_images_and_other_models(trained, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    data, ck = trained
    more = shutil.copytree(data, tmp_path / "more")  # another folder holding train images
    image_folder(tmp_path / "extra", classes=1, per_class=1, seed=5)
    shutil.copy(tmp_path / "extra" / "class0" / "000.png", more / "class0" / "new.png")
    assert main(report_args(more, tmp_path / "r", ck)) == 2
    assert "train part" in capsys.readouterr().err
    args = report_args(data, tmp_path / "r", ck)
    args[2] = "resnet32"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trained around resnet20, not resnet32" in err and "no --checkpoint" in err


def test_plan_costs_the_checkpoint_and_serve_serves_it(trained, tmp_path, single_thread,
                                                        capsys) -> None:
    data, ck = trained
    out, plan_path = tmp_path / "r.json", tmp_path / "plan.json"
    assert main(["plan", "--model", "resnet20", "--data", str(data), "--calib", "100",
                 "--splits", "layer1", "--codecs", "fp16", "--input-codecs", "jpeg",
                 "--repeats", "2", "--bandwidth", "1Mbit", "--max-drop", "100",
                 "--objective", "uplink", "--offload-only", "--checkpoint", str(ck),
                 "--json", str(out), "--plan-out", str(plan_path)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["profile"]["n_calib"] == 24  # the eval part: 24 of the 48 images
    (t,) = res["profile"]["trained"]
    assert t["checkpoint"] == str(ck.resolve()) and t["split"] == "layer2"
    (row,) = [r for r in res["rows"] if r["kind"] == "trained"]
    assert row["codec"] == "bottleneck" and row["checkpoint"] == str(ck.resolve())
    assert row["bytes_per_sample"] == t["option"]["wire_bytes"] < 1000
    assert row["uplink_bytes"] > row["bytes_per_sample"]  # protocol frame, WebSocket header
    assert row["head_ms"] > 0 and row["tail_ms"] > 0 and row["head_flops"] > 0
    assert {r["split"] for r in res["rows"] if r["kind"] == "split"} == {"layer1", "layer2"}
    assert "ckpt=ck" in text and "bottleneck" in text
    assert res["best"]["uplink"] == row["name"]  # the fewest bytes of all offloading plans
    plan = load_plan(plan_path)
    assert (plan.kind, plan.split, plan.checkpoint) == ("trained", "layer2", str(ck.resolve()))
    server = serve.build_server(parse_args(serve, ["--plan", str(plan_path)]))
    (dep,) = server.services.values()  # the trained row is served, named after its folder
    assert dep.name == "ck" and dep.codecs == {"bottleneck"}
