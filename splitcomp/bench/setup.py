"""Resolve a model name, weights, data source and cut point into what an evaluation needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..data import ImageFolderDataset, load_dataset
from ..partition import split
from ..zoo import load_model


@dataclass
class EvalSetup:
    model_name: str
    model: nn.Module
    dataset: ImageFolderDataset
    head: nn.Module
    tail: nn.Module

    def batches(self, batch_size: int) -> Iterator[tuple]:
        return self.dataset.batches(batch_size)


def load_eval_setup(
    model_name: str,
    weights: str | Path | None,
    data: str | Path,
    cut: str,
    *,
    limit: int | None = None,
    model: nn.Module | None = None,
) -> EvalSetup:
    """Model (eval mode, weights loaded), its dataset preprocessed its way, head and tail.
    ``model``: the model already built (``weights`` is then not read)."""
    model = load_model(model_name, weights) if model is None else model
    dataset = load_dataset(data, model.default_cfg.preprocess(), limit=limit)
    dataset.preload()
    example = dataset[0][0].unsqueeze(0)
    head, tail = split(model, cut, (example,))
    return EvalSetup(model_name, model, dataset, head, tail)
