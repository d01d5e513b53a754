"""``splitcomp train bottleneck`` end to end on a tiny image folder with random weights, then
``splitcomp eval --checkpoint`` reproducing its figures; one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from splitcomp.cli import main
from tests.train.tiny import image_folder, tiny_checkpoint, train_args

KEYS = {
    "model", "split", "codec", "n_train", "n_eval", "top1_baseline", "top1", "drop_pp",
    "bytes_per_sample", "bits_per_element", "encoder_params", "encoder_mflops", "head_mflops",
    "train_seconds", "tables_id", "channels", "beta", "estimated_bytes_per_sample",
    "n_eval_note",
}
SAME = ("top1_baseline", "top1", "drop_pp", "bytes_per_sample", "bits_per_element",
        "tables_id", "n_eval", "n_train", "encoder_params", "encoder_mflops", "head_mflops")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data folder, checkpoint folder, JSON figures) of one tiny run (9 steps)."""
    root = tmp_path_factory.mktemp("train")
    data, ck = tiny_checkpoint(root, "--json", str(root / "r.json"))
    return data, ck, json.loads((root / "r.json").read_text())


def test_train_writes_consistent_figures_and_a_checkpoint(trained) -> None:
    _, ck, rep = trained
    assert KEYS <= set(rep)
    assert (rep["model"], rep["split"], rep["codec"]) == ("resnet20", "layer2", "bottleneck")
    assert (rep["n_train"], rep["n_eval"], rep["channels"], rep["beta"]) == (24, 24, 8, 2.0)
    assert rep["drop_pp"] == pytest.approx(rep["top1_baseline"] - rep["top1"])
    assert rep["bits_per_element"] == pytest.approx(8 * rep["bytes_per_sample"] / 8192)
    assert rep["encoder_params"] > 0 and 0 < rep["encoder_mflops"] < rep["head_mflops"]
    assert rep["train_seconds"] > 0 and "4.167 pp" in rep["n_eval_note"]
    assert {p.name for p in ck.iterdir()} == {
        "checkpoint.json", "weights.safetensors", "split.json", "tables.sbnt"}
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["step"] == meta["total_steps"] == 9 and meta["weights"] == "random"
    assert meta["info"]["figures"]["top1"] == rep["top1"]


def test_eval_checkpoint_reproduces_the_figures(trained, tmp_path, single_thread) -> None:
    data, ck, rep = trained
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--no-progress",
                 "--json", str(out)]) == 0
    again = json.loads(out.read_text())
    assert KEYS <= set(again)
    assert {k: again[k] for k in SAME} == {k: rep[k] for k in SAME}


def test_eval_checkpoint_refuses_trained_on_images(trained, tmp_path, single_thread,
                                                   capsys) -> None:
    data, ck, _ = trained
    more = shutil.copytree(data, tmp_path / "more")
    image_folder(tmp_path / "extra", classes=1, per_class=1, seed=5)
    shutil.copy(tmp_path / "extra" / "class0" / "000.png", more / "class0" / "new.png")
    assert main(["eval", "--checkpoint", str(ck), "--data", str(more), "--no-progress"]) == 2
    assert "train part" in capsys.readouterr().err


def test_resume_finishes_the_step_count(trained, tmp_path, single_thread) -> None:
    data, ck, _ = trained
    resumed = shutil.copytree(ck, tmp_path / "ck")
    meta = json.loads((resumed / "checkpoint.json").read_text())
    meta.update(step=4, total_steps=12)  # as if killed at step 4 of 12
    (resumed / "checkpoint.json").write_text(json.dumps(meta))
    assert main(["train", "bottleneck", "--model", "resnet20", "--data", str(data), "--split",
                 "layer2", "--out", str(resumed), "--resume", "--no-progress"]) == 0
    meta = json.loads((resumed / "checkpoint.json").read_text())
    assert meta["step"] == meta["total_steps"] == meta["info"]["steps"] == 12


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "x", "--model", "resnet20"], "--split, --codec required"),
    (["train", "bottleneck", "--model", "resnet20", "--data", "x", "--split", "layer2",
      "--out", "o", "--epochs", "1"], "--beta is required"),
    (["train", "bottleneck", "--model", "resnet20", "--data", "x", "--split", "layer2",
      "--out", "o", "--beta", "1"], "--epochs or --minutes"),
])
def test_one_line_errors(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_an_error(tmp_path, capsys) -> None:
    assert main(train_args(tmp_path, tmp_path / "ck", "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_tails(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data, checkpoint, JSON figures) of a tiny run that also serves a random resnet32."""
    root = tmp_path_factory.mktemp("tails")
    data, ck = tiny_checkpoint(root, "--also", "resnet32:random", "--json", str(root / "r.json"))
    return data, ck, json.loads((root / "r.json").read_text())


def test_also_serves_every_tail_from_one_bitstream(two_tails, tmp_path, single_thread) -> None:
    data, ck, rep = two_tails
    assert list(rep["tails"]) == ["resnet20", "resnet32"]
    assert rep["tails"]["resnet20"]["top1"] == rep["top1"]
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["tails"] == [{"model": "resnet32", "weights": "random", "cut": "layer2"}]
    assert meta["bottleneck"]["tails"] == {"resnet32": 32}
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--no-progress",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tails"] == rep["tails"]


@pytest.mark.parametrize("also, message", [
    ("resnet20:random", "each model once"),
    ("no_such_model", "unknown model"),
    ("mobilenet_v2:random", "takes other inputs"),
])
def test_also_errors_are_one_line(trained, tmp_path, also, message, capsys) -> None:
    data, _, _ = trained
    assert main(train_args(data, tmp_path / "ck", "--also", also)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_targets_are_flagged() -> None:
    from splitcomp.cli._training import check_targets

    r = {"drop_pp": 1.5, "bytes_per_sample": 180.0}
    assert check_targets(dict(r), None, None) == ""
    out = dict(r)
    assert check_targets(out, 1.0, 200.0) == "<= 1 pp drop and <= 200 B/sample: MISSED"
    assert out["target_met"] is False and out["target"] == {"drop_pp": 1.0,
                                                             "bytes_per_sample": 200.0}
    assert check_targets(dict(r), 2.0, None).endswith(": met")
