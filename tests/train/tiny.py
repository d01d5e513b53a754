"""Tiny labelled image folders and a random-weight model cut, for fast training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from splitcomp.cli import main
from splitcomp.partition import split
from splitcomp.zoo import load_model


def image_folder(root: Path, classes: int = 4, per_class: int = 8, size: int = 32,
                 seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: random RGB images, CIFAR layout; returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random CIFAR-sized uint8 images (N, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def random_resnet20(cut: str = "layer2", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(head, tail) of a seeded random-weight resnet20 cut at ``cut``."""
    torch.manual_seed(seed)
    model = load_model("resnet20", "random")
    return split(model, cut, (torch.zeros(1, 3, 32, 32),))


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``splitcomp train bottleneck`` on ``data`` into ``out``: random resnet20 cut at
    layer2, 24 train images, 3 epochs of batches of 8 (9 steps)."""
    return ["train", "bottleneck", "--model", "resnet20", "--weights", "random", "--data",
            str(data), "--split", "layer2", "--beta", "2", "--channels", "8", "--epochs", "3",
            "--batch-size", "8", "--n-train", "24", "--no-progress", "--out", str(out), *extra]


def tiny_checkpoint(root: Path, *extra: str) -> tuple[Path, Path]:
    """(data folder, checkpoint folder): 48 random images in 4 classes under ``root/data``,
    a :func:`train_args` run into ``root/ck`` (a few seconds on one thread)."""
    data = root / "data"
    if not data.exists():
        image_folder(data, classes=4, per_class=12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_args(data, root / "ck", *extra)) == 0
    finally:
        torch.set_num_threads(threads)
    return data, root / "ck"
