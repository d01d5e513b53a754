"""A tiny training run on CPU (random-weight resnet20, 64 random images, 48 steps, a few
seconds): the loss and the rate fall, the teacher stays frozen, only the tuned blocks move."""

from __future__ import annotations

import copy

import pytest
import torch

from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import History, Student, TrainConfig, train_bottleneck
from splitcomp.train.checkpoint import state_equal

from .tiny import random_images, random_resnet20

#: all steps in the KD stage (no stage switch in the loss curve), a large rate weight
CFG = TrainConfig(channels=8, beta=50.0, epochs=12, batch_size=16, lr=5e-3, feature_share=0.0)


@pytest.fixture(scope="module")
def run() -> tuple[torch.nn.Module, torch.nn.Module, Student, History]:
    head, tail = random_resnet20()
    before = copy.deepcopy(head)
    student, hist = train_bottleneck(head, tail, random_images(64), CIFAR_EVAL.normalize, CFG)
    return before, head, student, hist


def test_loss_and_bits_fall(run) -> None:
    _, _, _, hist = run
    assert hist.steps == 48 and hist.step[-1] == 48
    first, last = hist.loss[:2], hist.loss[-2:]
    assert sum(last) / 2 < 0.9 * sum(first) / 2, hist.loss
    assert hist.bits_per_sample[-1] < 0.9 * hist.bits_per_sample[0], hist.bits_per_sample
    assert all(0.0 <= a <= 1.0 for a in hist.agree)


def test_teacher_frozen_only_tuned_blocks_train(run) -> None:
    before, head, student, _ = run
    assert state_equal(before, head)  # the teacher's head is untouched
    assert student.tuned_blocks == ["layer2.2"]
    moved = {name.split(".")[0] + "." + name.split(".")[1]
             for name, p in student.head.named_parameters()
             if not torch.equal(p, dict(before.named_parameters())[name])}
    assert moved == {"layer2.2"}
    assert not student.bottleneck.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (--device cuda)")
def test_a_few_steps_on_cuda() -> None:
    head, tail = random_resnet20()
    cfg = TrainConfig(channels=8, epochs=2, batch_size=16, device="cuda")
    student, hist = train_bottleneck(head, tail, random_images(32), CIFAR_EVAL.normalize, cfg)
    assert hist.steps == 4
    assert next(student.bottleneck.parameters()).device.type == "cuda"
    medians, _, rows = student.bottleneck.entropy.frequency_tables()
    assert medians.shape == (8,) and len(rows) == 8


def test_tune_tail_trains_a_server_copy_and_round_trips(tmp_path) -> None:
    """``tune_tail``: the tail's first block trains as a copy (the original stays the
    teacher), the checkpoint keeps it and the primary's server model runs it."""
    from splitcomp.train import Checkpoint, SplitRecord, load_checkpoint, save_checkpoint
    from splitcomp.train.ckpt_eval import model_tables

    head, tail = random_resnet20()
    before = copy.deepcopy(tail)
    cfg = TrainConfig(channels=8, beta=5.0, epochs=2, batch_size=16, feature_share=0.0,
                      tune_tail=1)
    student, _ = train_bottleneck(head, tail, random_images(32), CIFAR_EVAL.normalize, cfg)
    assert state_equal(before, tail)
    assert student.tail is not None and student.tuned_tail_blocks == ["layer3.0"]
    moved = {n.split(".")[0] for n, p in student.tail.named_parameters()
             if not torch.equal(p, dict(before.named_parameters())[n])}
    assert moved == {"layer3"}
    ckpt = Checkpoint("resnet20", "random", "layer2", student, cfg,
                      SplitRecord(0, 32, 0, "", []), tables=model_tables(
                          student.bottleneck.entropy).to_bytes())
    folder = save_checkpoint(ckpt, tmp_path / "ck")
    with pytest.raises(ValueError, match="fine-tuned tail"):
        load_checkpoint(folder, head)
    back = load_checkpoint(folder, head, tail)
    assert state_equal(back.student.tail, student.tail)
    assert back.student.tuned_tail_blocks == ["layer3.0"]
    assert back.server_model(tail).tail is back.student.tail
    assert back.server_model(tail, "resnet20").tail is back.student.tail
