"""Client adapters: identity at init, a tiny run that lowers its loss, the checkpoint round
trip, ``splitcomp train adapter`` end to end, and the CIFAR-10-C-style shifts."""

from __future__ import annotations

import json

import pytest
import torch

from splitcomp.data.corruptions import CORRUPTIONS, corrupt_uint8, corrupted, parse_shift
from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import CheckpointError, SplitRecord
from splitcomp.train.adapters import (
    Adapter,
    AdapterCheckpoint,
    AdapterConfig,
    load_adapter,
    save_adapter,
    train_adapter,
)

from .tiny import image_folder, random_images, random_resnet20


def test_an_untrained_adapter_is_the_identity() -> None:
    f = torch.randn(2, 32, 16, 16)
    assert torch.equal(Adapter(32).eval()(f), f)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_shift_is_deterministic_and_grows_with_severity(name) -> None:
    img = random_images(1, seed=4)[0]
    a, b = corrupt_uint8(img, name, 3, seed=1), corrupt_uint8(img, name, 3, seed=1)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == img.shape
    d = [float((corrupt_uint8(img, name, s, 1).float() - img.float()).abs().mean())
         for s in (1, 5)]
    assert 0 < d[0] < d[1]


def test_parse_shift_and_corrupted_datasets(tmp_path) -> None:
    assert parse_shift("jpeg:2") == ("jpeg_compression", 2)
    for bad in ("fog:3", "contrast", "contrast:6"):
        with pytest.raises(ValueError, match="shift"):
            parse_shift(bad)
    from splitcomp.data import load_dataset

    ds = load_dataset(str(image_folder(tmp_path / "d", classes=2, per_class=3)), CIFAR_EVAL)
    shifted = corrupted(ds, "gaussian_noise", 3)
    assert len(shifted) == len(ds) and torch.equal(shifted.labels, ds.labels)
    # the same image gets the same noise in any subset
    assert torch.equal(corrupted(ds.subset([4]), "gaussian_noise", 3).image_uint8(0),
                       shifted.image_uint8(4))
    assert not torch.equal(shifted.image_uint8(0), ds.image_uint8(0))


@pytest.mark.parametrize("place", ["cut", "input", "both"])
def test_a_tiny_adapter_run_lowers_its_loss_and_round_trips(tmp_path, place) -> None:
    head, tail = random_resnet20()
    frozen = {k: v.clone() for k, v in {**head.state_dict(), **tail.state_dict()}.items()}
    images, labels = random_images(64), torch.arange(64) % 10
    cfg = AdapterConfig(shift="contrast:3", place=place, epochs=12, batch_size=16, lr=1e-2)
    edge, hist = train_adapter(head, tail, images, labels, CIFAR_EVAL.normalize, cfg)
    assert hist.steps == 48
    assert sum(hist.loss[-2:]) < 0.9 * sum(hist.loss[:2]), hist.loss
    assert (edge.adapter is not None) == (place != "input")
    assert (edge.input_adapter is not None) == (place != "cut")
    # the model itself (its BN statistics too) is untouched
    after = {**head.state_dict(), **tail.state_dict()}
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    ck = AdapterCheckpoint("resnet20", "random", "layer2", edge.adapter, cfg,
                           SplitRecord(0, 64, 0, "", []), input_adapter=edge.input_adapter)
    back = load_adapter(save_adapter(ck, tmp_path / "ad"))
    x = CIFAR_EVAL.normalize(random_images(2, seed=9))
    assert torch.equal(back.edge_model(head)(x)[0], edge(x)[0])
    assert back.config.shift == "contrast:3" and back.params() == ck.params()
    with pytest.raises(CheckpointError):
        load_adapter(tmp_path / "missing")


def test_train_adapter_command_end_to_end(tmp_path) -> None:
    from splitcomp.cli import main

    data = image_folder(tmp_path / "data", classes=4, per_class=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train", "adapter", "--model", "resnet20", "--weights", "random", "--data",
                   str(data), "--split", "layer2", "--shift", "gaussian_noise:3", "--epochs",
                   "2", "--batch-size", "8", "--n-train", "16", "--pad", "0", "--no-progress",
                   "--out", str(tmp_path / "ad"), "--json", str(tmp_path / "r.json")])
        assert main(["train", "adapter", "--model", "resnet20", "--data", str(data),
                     "--split", "layer2", "--shift", "fog:3", "--epochs", "1", "--out",
                     str(tmp_path / "x")]) == 2
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    for key in ("shift", "top1_clean", "top1_shift_before", "top1_shift_after",
                "adapter_params", "train_seconds"):
        assert key in r, key
    assert r["shift"] == "gaussian_noise:3" and r["n_eval"] == 16 and not r["server_changed"]
    saved = json.loads((tmp_path / "ad" / "checkpoint.json").read_text())
    assert saved["config"]["pad"] == 0
