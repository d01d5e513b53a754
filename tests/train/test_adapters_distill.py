"""Client adapters distilled from clean/shifted pairs (``teacher="clean"``): a tiny run lowers
its loss and pulls the adapted features toward the clean ones, the setting round-trips in the
checkpoint and the JSON, ``teacher="none"`` ignores clean twins, and the CLI's mistakes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from splitcomp.cli import main
from splitcomp.data.corruptions import corrupt_uint8
from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import SplitRecord
from splitcomp.train.adapters import (
    AdapterCheckpoint,
    AdapterConfig,
    load_adapter,
    pair_loss,
    save_adapter,
    train_adapter,
)

from .tiny import image_folder, random_images, random_resnet20

pytestmark = pytest.mark.usefixtures("single_thread")


def _pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    clean = random_images(n, seed=3)
    return torch.stack([corrupt_uint8(im, "jpeg_compression", 5, i)
                        for i, im in enumerate(clean)]), clean


@torch.no_grad()
def _feature_gap(edge, head, shifted, clean) -> float:
    """Relative MSE of the edge's features on the shifted images to the head's on the clean."""
    (f,) = edge(CIFAR_EVAL.normalize(shifted))
    (t,) = head(CIFAR_EVAL.normalize(clean))
    return float(F.mse_loss(f, t) / t.pow(2).mean())


def test_pair_loss_is_the_cross_entropy_plus_what_is_weighted() -> None:
    logits, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    feat = torch.randn(4, 8, 2, 2)
    ce = F.cross_entropy(logits, y)
    plain = AdapterConfig(teacher="clean", kd_weight=0.0, feature_weight=0.0)
    assert torch.allclose(pair_loss(logits, y, feat, logits + 5, feat + 1, plain), ce)
    # a teacher that agrees exactly adds nothing; one that differs adds a positive term
    both = AdapterConfig(teacher="clean", kd_weight=1.0, feature_weight=1.0)
    assert torch.allclose(pair_loss(logits, y, feat, logits, feat, both), ce, atol=1e-6)
    assert pair_loss(logits, y, feat, -logits, feat * 2, both) > ce + 0.1


def test_a_tiny_distillation_run_lowers_its_loss_and_round_trips(tmp_path) -> None:
    shifted, clean = _pairs(64)
    labels = torch.arange(64) % 10
    cfg = AdapterConfig(shift="jpeg_compression:5", place="both", epochs=12, batch_size=16,
                        lr=1e-2, pad=0, teacher="clean", kd_weight=1.0, feature_weight=10.0,
                        temperature=2.0)
    gaps = {}
    for teacher in ("none", "clean"):
        head, tail = random_resnet20()
        run = AdapterConfig(**{**cfg.to_json(), "teacher": teacher})
        edge, hist = train_adapter(head, tail, shifted, labels, CIFAR_EVAL.normalize, run,
                                   clean=clean)
        assert hist.steps == 48
        assert sum(hist.loss[-2:]) < 0.95 * sum(hist.loss[:2]), (teacher, hist.loss)
        gaps[teacher] = _feature_gap(edge, head, shifted, clean)
    # the clean teacher keeps the features on the shifted images much nearer the frozen
    # head's on their clean twins than the labels alone do
    assert gaps["clean"] < 0.7 * gaps["none"], gaps
    ck = AdapterCheckpoint("resnet20", "random", "layer2", edge.adapter, cfg,
                           SplitRecord(0, 64, 0, "", []), input_adapter=edge.input_adapter)
    back = load_adapter(save_adapter(ck, tmp_path / "ad"))
    assert back.config == cfg and back.config.teacher == "clean"
    x = CIFAR_EVAL.normalize(shifted[:2])
    assert torch.equal(back.edge_model(head)(x)[0], edge(x)[0])


def test_teacher_none_ignores_clean_twins_and_clean_needs_them() -> None:
    shifted, clean = _pairs(16)
    labels = torch.arange(16) % 10
    cfg = AdapterConfig(shift="jpeg_compression:5", epochs=2, batch_size=8)
    runs = []
    for twins in (None, clean):
        head, tail = random_resnet20()
        edge, _ = train_adapter(head, tail, shifted, labels, CIFAR_EVAL.normalize, cfg,
                                clean=twins)
        runs.append(edge.adapter.state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())
    head, tail = random_resnet20()
    for bad in (AdapterConfig(teacher="clean", epochs=1), AdapterConfig(teacher="teacher")):
        with pytest.raises(ValueError, match="teacher"):
            train_adapter(head, tail, shifted, labels, CIFAR_EVAL.normalize, bad)
    with pytest.raises(ValueError, match="twin"):
        train_adapter(head, tail, shifted, labels, CIFAR_EVAL.normalize,
                      AdapterConfig(teacher="clean", epochs=1), clean=clean[:8])


def _args(data, tmp_path, *extra: str) -> list[str]:
    return ["train", "adapter", "--model", "resnet20", "--weights", "random", "--data",
            str(data), "--split", "layer2", "--shift", "jpeg:3", "--epochs", "2",
            "--batch-size", "8", "--n-train", "16", "--pad", "0", "--no-progress",
            "--out", str(tmp_path / "ad"), "--json", str(tmp_path / "r.json"), *extra]


def test_train_adapter_with_a_clean_teacher_end_to_end(tmp_path) -> None:
    data = image_folder(tmp_path / "data", classes=4, per_class=8)
    assert main(_args(data, tmp_path, "--place", "both", "--teacher", "clean",
                      "--feature-weight", "0.5", "--temperature", "2")) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["teacher"], r["kd_weight"], r["feature_weight"], r["temperature"]) == (
        "clean", 1.0, 0.5, 2.0)
    saved = json.loads((tmp_path / "ad" / "checkpoint.json").read_text())["config"]
    assert (saved["teacher"], saved["feature_weight"], saved["temperature"]) == (
        "clean", 0.5, 2.0)
    assert load_adapter(tmp_path / "ad").config.teacher == "clean"


@pytest.mark.parametrize("extra", [
    ("--teacher", "dirty"),
    ("--kd-weight", "1"),  # without --teacher clean
    ("--teacher", "clean", "--temperature", "0"),
    ("--teacher", "clean", "--feature-weight", "-1"),
])
def test_train_adapter_teacher_mistakes_are_one_line_and_exit_2(tmp_path, capsys,
                                                                extra) -> None:
    data = image_folder(tmp_path / "data", classes=2, per_class=2)
    assert main(_args(data, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitcomp: error:") and "\n" not in err, err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "ad").exists()
