"""ImageFolderDataset and load_dataset: order, batching, caching, subsets, the real folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitcomp.data import (
    IMAGENET_EVAL,
    ImageFolderDataset,
    Preprocess,
    load_dataset,
    spread_indices,
)

from .test_formats import write_image


@pytest.fixture
def small(tmp_path: Path) -> ImageFolderDataset:
    for label, name in enumerate("abcd"):
        for i in range(5):
            write_image(tmp_path / name / f"{i}.png", 40 * label + i)
    return load_dataset(tmp_path)


def test_items_batches_and_loader_agree(small: ImageFolderDataset) -> None:
    assert len(small) == 20 and small.format == "cifar"
    x0, y0 = small[7]
    assert x0.shape == (3, 8, 8) and x0.dtype == torch.float32 and y0 == 1
    batches = list(small.batches(6))
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]
    xs = torch.cat([x for x, _ in batches])
    assert torch.equal(xs[7], x0)
    assert torch.equal(torch.cat([y for _, y in batches]), small.labels)
    lx, ly = next(iter(small.loader(20)))
    torch.testing.assert_close(lx, xs)
    assert torch.equal(ly, small.labels)


def test_cache_and_preload(small: ImageFolderDataset, tmp_path: Path) -> None:
    first = small.image_uint8(0)
    assert small.image_uint8(0) is first
    small.preload(workers=2)
    assert all(img is not None for img in small._decoded)
    uncached = load_dataset(tmp_path, cache=False)
    assert uncached.image_uint8(0) is not uncached.image_uint8(0)


def test_subset_spreads_over_classes(small: ImageFolderDataset) -> None:
    assert spread_indices(20, 4) == [0, 5, 10, 15]
    assert spread_indices(3, 10) == [0, 1, 2]
    sub = small.subset(4)
    assert sub.labels.tolist() == [0, 1, 2, 3]
    assert load_dataset(small.root, limit=8).labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_with_preprocess_reuses_decoding(small: ImageFolderDataset) -> None:
    small.preload(workers=1)
    other = small.with_preprocess(Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3))
    assert other.image_uint8(3) is small.image_uint8(3)
    torch.testing.assert_close(other[3][0], small.image_uint8(3) / 127.5 - 1)


def test_named_dataset_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITCOMP_DATA", "")
    with pytest.raises(FileNotFoundError, match="shared data"):
        load_dataset("cifar10")


@pytest.mark.requires_shared_data
def test_shared_cifar10() -> None:
    ds = load_dataset("cifar10", limit=500)
    assert len(ds) == 500 and ds.classes is not None and ds.classes[0] == "airplane"
    assert torch.bincount(ds.labels).tolist() == [50] * 10
    x, y = next(ds.batches(4))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 0, 0]


@pytest.mark.requires_shared_data
def test_shared_imagenet_labels() -> None:
    ds = load_dataset("imagenet", limit=10)
    assert ds.preprocess == IMAGENET_EVAL
    names = [p.name for p, _ in ds.samples]
    assert names[0] == "n01440764_tench.JPEG" and ds.labels[0] == 0
    assert ds.labels.tolist() == sorted(ds.labels.tolist())
    assert ds[1][0].shape == (3, 224, 224)


def test_foolbox_datasets(installed_package) -> None:
    installed_package("foolbox")
    imagenet = load_dataset("foolbox-imagenet")
    cifar = load_dataset("foolbox-cifar10")
    assert len(imagenet) == 20 and imagenet.format == "foolbox-imagenet"
    assert imagenet.preprocess == IMAGENET_EVAL and imagenet[0][0].shape == (3, 224, 224)
    assert cifar[0][0].shape == (3, 32, 32) and cifar[0][1] == 3
    with pytest.raises(ValueError, match="no foolbox dataset"):
        load_dataset("foolbox-svhn")
