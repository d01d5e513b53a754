"""Checkpoints: a save/load round trip keeps every tensor and setting, a killed run resumes
at its step count, and broken folders raise CheckpointError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import (
    Bottleneck,
    Checkpoint,
    CheckpointError,
    SplitRecord,
    Student,
    TrainConfig,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    train_bottleneck,
    trainable_head,
)
from splitcomp.train.checkpoint import state_equal
from splitcomp.train.ckpt_eval import model_tables

from .tiny import random_images, random_resnet20


@pytest.fixture(scope="module")
def halves() -> tuple[torch.nn.Module, torch.nn.Module]:
    return random_resnet20()


def make_checkpoint(head: torch.nn.Module) -> Checkpoint:
    torch.manual_seed(5)
    s_head, tuned = trainable_head(head, 1)
    bn = Bottleneck(32, 8)
    with torch.no_grad():
        for p in bn.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    bn.eval()
    cfg = TrainConfig(channels=8, beta=3.0, epochs=2.5)
    split = SplitRecord(7, 10, 12, "ab" * 32, ["0123456789abcdef"])
    return Checkpoint("resnet20", "random", "layer2", Student(s_head, bn, tuned), cfg, split,
                      step=5, total_steps=9, tables=model_tables(bn.entropy).to_bytes(),
                      info={"train_seconds": 1.5})


def test_round_trip(halves, tmp_path) -> None:
    head, _ = halves
    ckpt = make_checkpoint(head)
    folder = save_checkpoint(ckpt, tmp_path / "ck")
    assert {p.name for p in folder.iterdir()} == {
        "checkpoint.json", "weights.safetensors", "split.json", "tables.sbnt"}
    back = load_checkpoint(folder, head)
    assert state_equal(back.student.head, ckpt.student.head)
    assert state_equal(back.bottleneck, ckpt.bottleneck)
    assert back.config == ckpt.config and back.split == ckpt.split
    assert (back.model, back.weights, back.cut) == ("resnet20", "random", "layer2")
    assert (back.step, back.total_steps, back.info) == (5, 9, {"train_seconds": 1.5})
    assert back.tables == ckpt.tables and back.student.tuned_blocks == ["layer2.2"]
    assert read_meta(folder)["cut"] == "layer2"


class Killed(Exception):
    pass


def test_a_killed_run_resumes_at_its_step(halves, tmp_path) -> None:
    head, tail = halves
    images = random_images(32)
    cfg = TrainConfig(channels=8, epochs=5, batch_size=16)  # 2 steps an epoch: 10 steps
    split = SplitRecord(0, 32, 0, "", [])

    def save_and_die(student: Student, step: int, total: int) -> None:
        if step == 4:
            tables = model_tables(student.bottleneck.entropy).to_bytes()
            save_checkpoint(Checkpoint("resnet20", "random", "layer2", student, cfg, split,
                                       step, total, tables), tmp_path / "ck")
            raise Killed

    with pytest.raises(Killed):
        train_bottleneck(head, tail, images, CIFAR_EVAL.normalize, cfg,
                         on_checkpoint=save_and_die, checkpoint_every=0.0)
    ckpt = load_checkpoint(tmp_path / "ck", head)
    assert (ckpt.step, ckpt.total_steps) == (4, 10)
    student, hist = train_bottleneck(head, tail, images, CIFAR_EVAL.normalize, ckpt.config,
                                     student=ckpt.student, start_step=ckpt.step,
                                     total_steps=ckpt.total_steps)
    assert student is ckpt.student
    assert hist.steps == 6 and hist.step == [10]


@pytest.fixture
def saved(halves, tmp_path) -> Path:
    return save_checkpoint(make_checkpoint(halves[0]), tmp_path / "ck")


def _break(folder: Path, how: str) -> None:
    if how == "no folder":
        shutil.rmtree(folder)
    elif how == "no weights":
        (folder / "weights.safetensors").unlink()
    elif how == "truncated weights":
        data = (folder / "weights.safetensors").read_bytes()
        (folder / "weights.safetensors").write_bytes(data[:100])
    elif how == "bad json":
        (folder / "checkpoint.json").write_text("{not json")
    elif how == "other format":
        meta = json.loads((folder / "checkpoint.json").read_text())
        (folder / "checkpoint.json").write_text(json.dumps({**meta, "format": "other"}))
    elif how == "bad config":
        meta = json.loads((folder / "checkpoint.json").read_text())
        meta["config"]["no_such_setting"] = 1
        (folder / "checkpoint.json").write_text(json.dumps(meta))
    elif how == "no split":
        (folder / "split.json").unlink()


@pytest.mark.parametrize("how", ["no folder", "no weights", "truncated weights", "bad json",
                                 "other format", "bad config", "no split"])
def test_broken_checkpoints_raise(saved, halves, how) -> None:
    _break(saved, how)
    with pytest.raises(CheckpointError):
        load_checkpoint(saved, halves[0])


def test_read_meta_of_a_missing_folder_raises(tmp_path) -> None:
    with pytest.raises(CheckpointError):
        read_meta(tmp_path / "nothing")


def test_weights_of_another_cut_raise(saved) -> None:
    head, _ = random_resnet20("layer1")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(saved, head)
