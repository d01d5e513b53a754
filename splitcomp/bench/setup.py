"""Resolve a model name, weights, data source and cut point into what an evaluation needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..data import ImageFolderDataset, load_dataset
from ..partition import split
from ..zoo import create_model, model_config


@dataclass
class EvalSetup:
    model_name: str
    model: nn.Module
    dataset: ImageFolderDataset
    head: nn.Module
    tail: nn.Module

    def batches(self, batch_size: int) -> Iterator[tuple]:
        return self.dataset.batches(batch_size)


def load_model(name: str, weights: str | Path | None) -> nn.Module:
    """A zoo model with its weights (default ones when None, random init for ``"random"``).

    A CIFAR ResNet of any depth loads from its weight file (the depth is read from it).
    """
    if weights == "random":
        return create_model(name, weights=None)
    if weights is not None and model_config(name).family == "resnet_cifar":
        name = "resnet_cifar"  # any depth: read from the state dict
    return create_model(name, weights=weights if weights is not None else "default")


def load_eval_setup(
    model_name: str,
    weights: str | Path | None,
    data: str | Path,
    cut: str,
    *,
    limit: int | None = None,
) -> EvalSetup:
    """Model (eval mode, weights loaded), its dataset preprocessed its way, head and tail."""
    model = load_model(model_name, weights)
    dataset = load_dataset(data, model.default_cfg.preprocess(), limit=limit)
    dataset.preload()
    example = dataset[0][0].unsqueeze(0)
    head, tail = split(model, cut, (example,))
    return EvalSetup(model_name, model, dataset, head, tail)
