"""Several tails from one bitstream: a tiny two-tail run (random resnet20 + random resnet32 at
layer2) lowers its loss, its checkpoint keeps both decoders, and evaluation scores both tails
on the same decoded latent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from splitcomp.data import load_dataset
from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    state_equal,
)
from splitcomp.train.ckpt_eval import evaluate_checkpoint, model_tables
from splitcomp.train.splits import split_dataset
from splitcomp.train.tails import TailRecord, Teacher, crossing_shapes, open_tails
from splitcomp.train.trainer import History, Student, TrainConfig, train_bottleneck

from .tiny import image_folder, random_resnet20

#: all steps in the KD stage, a large rate weight (as test_trainer), 64 steps
CFG = TrainConfig(channels=8, beta=50.0, epochs=32, batch_size=16, lr=5e-3, feature_share=0.0)
ALSO = TailRecord("resnet32", "random", "layer2")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module, Student, History]:
    """(data folder, primary head, tail, student, history): 64 images, half trained on."""
    data = image_folder(tmp_path_factory.mktemp("tails") / "data", classes=4, per_class=16)
    ds = load_dataset(data, CIFAR_EVAL)
    train, _, record = split_dataset(ds, 32, CFG.seed)
    images = torch.stack([train.image_uint8(i) for i in range(len(train))])
    head, tail = random_resnet20(seed=CFG.seed)
    extra = open_tails([ALSO], CFG.seed)
    student, hist = train_bottleneck(head, tail, images, CIFAR_EVAL.normalize, CFG,
                                     extra=extra)
    ckpt = Checkpoint("resnet20", "random", "layer2", student, CFG, record, hist.steps,
                      hist.steps, model_tables(student.bottleneck.entropy).to_bytes(),
                      tails=[ALSO])
    save_checkpoint(ckpt, data.parent / "ck")
    return data, head, tail, student, hist


def test_the_loss_falls_with_two_tails(run) -> None:
    _, _, _, student, hist = run
    assert hist.steps == 64
    assert sum(hist.loss[-2:]) < 0.9 * sum(hist.loss[:2]), hist.loss
    assert list(student.bottleneck.tails) == ["resnet32"]
    assert student.bottleneck.config()["tails"] == {"resnet32": 32}


def test_the_checkpoint_round_trips_both_decoders(run) -> None:
    data, head, _, student, _ = run
    back = load_checkpoint(data.parent / "ck", head)
    assert back.tails == [ALSO]
    assert state_equal(back.bottleneck, student.bottleneck)
    assert state_equal(back.bottleneck.tails["resnet32"], student.bottleneck.tails["resnet32"])
    (other,) = back.extra_teachers()
    server = back.server_model(other.tail, "resnet32")
    assert server.decoder is back.bottleneck.tails["resnet32"]
    y_hat = torch.zeros(2, 8, 8, 8)
    assert server(y_hat).shape == (2, 10)


def test_evaluate_scores_every_tail_on_one_latent(run) -> None:
    data, head, tail, _, _ = run
    ckpt = load_checkpoint(data.parent / "ck", head)
    r = evaluate_checkpoint(ckpt, head, tail, load_dataset(data, CIFAR_EVAL), 16)
    assert list(r["tails"]) == ["resnet20", "resnet32"]
    assert r["n_eval"] == 32
    assert {k: r[k] for k in ("top1_baseline", "top1", "drop_pp")} == r["tails"]["resnet20"]
    for t in r["tails"].values():
        assert t["drop_pp"] == pytest.approx(t["top1_baseline"] - t["top1"])


def test_old_checkpoints_without_tails_load(run, tmp_path) -> None:
    data, head, _, _, _ = run
    ck = shutil.copytree(data.parent / "ck", tmp_path / "old")
    tensors = load_file(str(ck / "weights.safetensors"))
    save_file({k: v for k, v in tensors.items() if ".tails." not in k},
              str(ck / "weights.safetensors"))
    meta = json.loads((ck / "checkpoint.json").read_text())
    del meta["tails"], meta["bottleneck"]["tails"]
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    old = load_checkpoint(ck, head)
    assert old.tails == [] and not old.bottleneck.tails
    meta["tails"] = [ALSO.to_json()]  # a record without its decoder
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tails"):
        load_checkpoint(ck, head)


def test_tails_of_another_spatial_size_are_refused() -> None:
    head, tail = random_resnet20()
    (other,) = open_tails([TailRecord("resnet32", "random", "layer3")], 0)
    with pytest.raises(ValueError, match="same spatial size"):
        crossing_shapes([Teacher(None, head, tail), other], torch.zeros(1, 3, 32, 32))
