"""A zoo model by name with its weights: ``load_model("resnet20", None)``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .registry import create_model, model_config


def load_model(name: str, weights: str | Path | None) -> nn.Module:
    """A zoo model with its weights (default ones when None, random init for ``"random"``).

    A CIFAR ResNet of any depth loads from its weight file (the depth is read from it).
    """
    if weights == "random":
        return create_model(name, weights=None)
    if weights is not None and model_config(name).family == "resnet_cifar":
        name = "resnet_cifar"  # any depth: read from the state dict
    return create_model(name, weights=weights if weights is not None else "default")
