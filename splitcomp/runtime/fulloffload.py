"""The full-offload baseline: the server runs the whole model on the raw image.

The client sends the image as the model sees it before normalisation: CHW uint8 pixels after
resize and centre crop (3x224x224 = 150,528 bytes for ImageNet models), carried bit-exact by
the ``fp32`` codec (which passes non-float tensors through raw). The server normalises and
runs the whole model. Sending raw pixels rather than the JPEG file keeps image decoding off
the server, so the server-compute comparison with a split is conservative (full offload at
its lightest).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.transforms import Preprocess
from .deployment import Deployment, InputSpec

#: the codec the full-offload client sends pixels with (lossless for uint8)
FULL_OFFLOAD_CODEC = "fp32"


class PixelsToLogits(nn.Module):
    """uint8 NCHW pixels -> normalised float -> ``model``."""

    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.to(torch.float32) - self.mean) / self.std)


def full_offload_deployment(model: nn.Module, preprocess: Preprocess,
                            input_size: tuple[int, ...], name: str,
                            **options: Any) -> Deployment:
    """Serve the whole ``model`` on uint8 pixels of ``input_size`` (C, H, W) as ``name``."""
    model.eval()
    spec = InputSpec(torch.uint8, tuple(input_size), len(input_size) + 1)
    options.setdefault("codecs", [FULL_OFFLOAD_CODEC])
    return Deployment(name, PixelsToLogits(model, preprocess), input_specs=[spec], **options)


def zoo_full_offload(model_name: str, *, weights: str | None = "default",
                     name: str | None = None, model: nn.Module | None = None,
                     **options: Any) -> Deployment:
    """A zoo image model served whole on raw pixels (named ``name`` or ``<model>-full``)."""
    from ..zoo import load_model, model_config

    cfg = model_config(model_name)
    if cfg.input_size is None:
        raise ValueError(f"{model_name} does not take images")
    if model is None:
        model = load_model(model_name, None if weights == "default" else (weights or "random"))
    return full_offload_deployment(model, cfg.preprocess(), tuple(cfg.input_size),
                                   name or f"{model_name}-full", **options)
