"""Helpers shared by the Hugging Face language-model builders (transformers imported lazily)."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn


def require(*modules: str, purpose: str) -> None:
    """ImportError naming what to install when an optional module is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{purpose} needs {', '.join(missing)}: pip install {' '.join(missing)}")


def build_seeded(model_cls: Any, config: Any, seed: int) -> nn.Module:
    """``model_cls(config)`` with its random initialisation drawn from ``seed``, leaving the
    global RNG state untouched; float32, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.float().eval()
