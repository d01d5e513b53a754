"""The seeded train/eval split: sizes, class balance, determinism, and refusing trained-on
images at evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from splitcomp.data import load_dataset
from splitcomp.train import TrainedOnError, eval_part, split_dataset

from .tiny import image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 classes x 10 random 32x32 PNGs."""
    return image_folder(tmp_path_factory.mktemp("split") / "data", classes=4, per_class=10)


def names(ds) -> list[str]:
    return [p.name if ds.root is None else str(p.relative_to(ds.root)) for p, _ in ds.samples]


def test_sizes_disjoint_and_class_balanced(folder) -> None:
    ds = load_dataset(folder)
    train, held, rec = split_dataset(ds, 16, seed=0)
    assert (len(train), len(held), rec.n_train, rec.n_eval) == (16, 24, 16, 24)
    assert not set(names(train)) & set(names(held))
    assert sorted(names(train) + names(held)) == sorted(names(ds))
    assert torch.bincount(train.labels).tolist() == [4, 4, 4, 4]
    assert torch.bincount(held.labels).tolist() == [6, 6, 6, 6]
    assert len(rec.train_fingerprints) == 16
    with pytest.raises(ValueError, match="n_train"):
        split_dataset(ds, 40)


def test_same_seed_same_split_other_seed_other_split(folder) -> None:
    ds = load_dataset(folder)
    a_train, a_held, a = split_dataset(ds, 20, seed=3)
    b_train, b_held, b = split_dataset(load_dataset(folder), 20, seed=3)
    assert names(a_train) == names(b_train) and names(a_held) == names(b_held)
    assert a.to_json() == b.to_json()
    c_train, _, c = split_dataset(ds, 20, seed=4)
    assert names(c_train) != names(a_train) and c.eval_digest != a.eval_digest


def test_eval_part_gives_back_the_eval_part(folder) -> None:
    ds = load_dataset(folder)
    _, held, rec = split_dataset(ds, 16, seed=0)
    again = eval_part(load_dataset(folder), rec)
    assert names(again) == names(held)
    assert eval_part(held, rec) is held  # the eval part alone passes the check


def test_eval_part_refuses_train_images(folder, tmp_path) -> None:
    ds = load_dataset(folder)
    train, held, rec = split_dataset(ds, 16, seed=0)
    with pytest.raises(TrainedOnError):
        eval_part(train, rec)
    index = {p: i for i, (p, _) in enumerate(ds.samples)}
    mixed = ds.subset([index[train.samples[0][0]]] + [index[p] for p, _ in held.samples[:5]])
    with pytest.raises(TrainedOnError, match="1 of 6"):
        eval_part(mixed, rec)
    # a trained-on image copied into another folder is recognised by its pixels
    other = image_folder(tmp_path / "other", classes=2, per_class=3, seed=9)
    shutil.copy(train.samples[0][0], other / "class0" / "copy.png")
    with pytest.raises(TrainedOnError):
        eval_part(load_dataset(other), rec)
    assert len(eval_part(load_dataset(image_folder(tmp_path / "clean", 2, 3, seed=9)), rec)) == 6


@pytest.mark.requires_shared_data
def test_cifar10_test_set_splits_5000_5000(shared_path) -> None:
    shared_path("cifar10-test")
    ds = load_dataset("cifar10")
    assert len(ds) == 10_000
    train, held, rec = split_dataset(ds, 5000, seed=0)
    assert (len(train), len(held)) == (5000, 5000)
    assert torch.bincount(held.labels).tolist() == [500] * 10
    assert names(eval_part(ds, rec)) == names(held)


def test_reserve_part_keeps_images_out_and_round_trips(folder) -> None:
    from splitcomp.train import SplitRecord, reserve_part

    train, _, rec = split_dataset(load_dataset(folder), 20, seed=0)
    assert reserve_part(train, rec) == (train, None)
    rec.reserved = 8
    used, kept = reserve_part(train, rec)
    assert (len(used), len(kept)) == (12, 8)
    assert not set(names(used)) & set(names(kept))
    assert sorted(names(used) + names(kept)) == sorted(names(train))
    assert torch.bincount(kept.labels).tolist() == [2, 2, 2, 2]
    again = SplitRecord.from_json(rec.to_json())
    assert again.reserved == 8 and again.same_split(rec)
    assert names(reserve_part(train, again)[1]) == names(kept)  # the same images each time
    old = rec.to_json()
    del old["reserved"]  # checkpoints written before --reserve existed
    assert SplitRecord.from_json(old).reserved == 0
    rec.reserved = 20
    with pytest.raises(ValueError, match="reserve"):
        reserve_part(train, rec)
