"""Early exit: the calibration rule, a tiny distillation run whose loss falls, the checkpoint
round trip and ``splitcomp train exit`` end to end on a tiny folder (random weights)."""

from __future__ import annotations

import json

import pytest
import torch

from splitcomp import codecs
from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import CheckpointError, SplitRecord
from splitcomp.train.exit_ckpt import ExitCheckpoint, load_exit, save_exit
from splitcomp.train.exits import EdgeExit, ExitConfig, ExitHead, calibrate, train_exit

from .tiny import image_folder, random_images, random_resnet20


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v)


def test_calibrate_exits_the_most_confident_within_the_budget() -> None:
    conf = _t(0.99, 0.9, 0.8, 0.7, 0.6)
    server = _t(1, 1, 1, 1, 1).bool()
    exit_right = _t(1, 1, 0, 1, 0).bool()
    # 5 images: one wrong exit costs 20 pp
    assert calibrate(conf, exit_right, server, 0.0) == pytest.approx(0.9)
    assert calibrate(conf, exit_right, server, 20.0) == pytest.approx(0.7)
    assert calibrate(conf, exit_right, server, 40.0) == pytest.approx(0.6)
    assert calibrate(conf, ~server, server, 0.0) == float("inf")


def test_calibrate_with_a_margin_keeps_a_reserve() -> None:
    conf = torch.linspace(1.0, 0.5, 100)
    exit_right = torch.ones(100, dtype=torch.bool)
    exit_right[[10, 30, 60]] = False  # three exits differ from the server path
    server = torch.ones(100, dtype=torch.bool)
    # 1 pp allows one wrong exit raw; with a 1-sigma reserve, one wrong exit costs 1 + 1 pp
    assert calibrate(conf, exit_right, server, 1.0) == pytest.approx(float(conf[29]))
    assert calibrate(conf, exit_right, server, 1.0, margin=1.0) == pytest.approx(float(conf[9]))
    assert calibrate(conf, exit_right, server, 2.0, margin=1.0) == pytest.approx(float(conf[29]))


def test_calibrate_never_splits_a_tie_and_counts_exits_that_fix_the_server() -> None:
    conf = _t(0.9, 0.9, 0.5)
    # the tie at 0.9 is one wrong and one right exit: both or neither
    assert calibrate(conf, _t(1, 0, 1).bool(), _t(1, 1, 1).bool(), 0.0) == float("inf")
    # an exit right where the server path is wrong pays for a later wrong one
    assert calibrate(_t(0.9, 0.8), _t(1, 0).bool(), _t(0, 1).bool(), 0.0) == pytest.approx(0.8)


def test_a_tiny_exit_run_lowers_its_loss_and_round_trips(tmp_path) -> None:
    head, tail = random_resnet20()
    cfg = ExitConfig(epochs=12, batch_size=16, label_weight=0.0)
    exit_head, hist = train_exit(head, tail, random_images(64), CIFAR_EVAL.normalize, cfg)
    assert hist.steps == 48
    assert sum(hist.loss[-2:]) < 0.9 * sum(hist.loss[:2]), hist.loss
    ck = ExitCheckpoint("resnet20", "random", "layer2", EdgeExit(exit_head, 0.75), cfg,
                        SplitRecord(0, 64, 0, "", []), "int8", {"per_channel": True})
    back = load_exit(save_exit(ck, tmp_path / "ex"))
    assert (back.exit.threshold, back.exit.rule, back.codec, back.params) == (
        0.75, "softmax", "int8", {"per_channel": True})
    feat = head(CIFAR_EVAL.normalize(random_images(4, seed=1)))[0]
    logits, conf, exits = back.exit(feat)
    assert torch.equal(logits, exit_head(feat)) and torch.equal(exits, conf >= 0.75)
    assert isinstance(back.server_codec(), codecs.Codec)
    (tmp_path / "ex" / "checkpoint.json").write_text("{}")
    with pytest.raises(CheckpointError, match="format"):
        load_exit(tmp_path / "ex")


def test_exit_head_shape() -> None:
    head = ExitHead(32, 10)
    assert head(torch.zeros(2, 32, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="confidence rule"):
        EdgeExit(head, 0.5, "margin")


def test_train_exit_command_end_to_end(tmp_path) -> None:
    from splitcomp.cli import main

    data = image_folder(tmp_path / "data", classes=4, per_class=12)
    out = tmp_path / "ex"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train", "exit", "--model", "resnet20", "--weights", "random", "--data",
                   str(data), "--split", "layer2", "--target-drop", "5", "--epochs", "2",
                   "--batch-size", "8", "--n-train", "32", "--n-calib", "8", "--no-progress",
                   "--out", str(out), "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    for key in ("edge_share", "top1_baseline", "top1", "drop_pp", "bytes_per_sample_mean",
                "exit_params", "exit_mflops"):
        assert key in r, key
    assert (r["n_train"], r["n_calib"], r["n_eval"]) == (24, 8, 16)
    assert r["bytes_per_sample_mean"] == pytest.approx(
        (1 - r["edge_share"]) * r["bytes_per_sample_without_exit"], rel=0.05)
    assert "target_met" in r and load_exit(out).exit.threshold == r["threshold"]
