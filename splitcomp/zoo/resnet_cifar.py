"""CIFAR-10 ResNets (He et al. 2016, section 4.2): 3 stages of ``n`` basic blocks, depth 6n+2.

Shortcuts are "option A": identity, with stride-2 subsampling and zero-padded channels where
the shape changes, so they add no parameters. Parameter names follow the shared weights
(``conv1, bn1, layer1..3, linear``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.paths import shared_data_path
from .registry import create_model, register_model

WEIGHT_FILES = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th"}


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a parameter-free shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        reshape = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut((planes - in_planes) // 2) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global average pool, linear head."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, 1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, 2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def build_resnet_cifar(depth: int = 20, num_classes: int = 10) -> ResNetCifar:
    """A CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...: 6n+2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return ResNetCifar((depth - 2) // 6, num_classes)


def depth_from_state_dict(state: dict[str, torch.Tensor]) -> int:
    """Depth implied by a state dict: 6 x (blocks in ``layer1``) + 2."""
    blocks = {k.split(".")[1] for k in state if k.startswith("layer1.")}
    if not blocks:
        raise ValueError("not a CIFAR ResNet state dict (no layer1.* keys)")
    return 6 * len(blocks) + 2


def _kwargs_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, int]:
    return {"depth": depth_from_state_dict(state), "num_classes": state["linear.weight"].shape[0]}


def resnet_cifar_from_state_dict(path: str | Path) -> ResNetCifar:
    """Build the ResNet a weights file describes (depth read from it) and load it, strictly."""
    return create_model("resnet_cifar", weights=path)


def _shared_weights(depth: int) -> Callable[[], Path | None]:
    return lambda: shared_data_path("weights", WEIGHT_FILES[depth])


_CIFAR = dict(dataset="cifar10", num_classes=10, input_size=(3, 32, 32), family="resnet_cifar")


def _register_depth(depth: int) -> None:
    def build(num_classes: int = 10) -> ResNetCifar:
        return build_resnet_cifar(depth, num_classes)

    build.__doc__ = f"ResNet-{depth} for CIFAR-10."
    source = f"shared data weights/{WEIGHT_FILES[depth]}" if depth in WEIGHT_FILES else ""
    default = _shared_weights(depth) if depth in WEIGHT_FILES else None
    register_model(f"resnet{depth}", default_weights=default, weights_source=source,
                   **_CIFAR)(build)


for _depth in (20, 32, 44, 56):
    _register_depth(_depth)

register_model(
    "resnet_cifar", kwargs_from_state_dict=_kwargs_from_state_dict,
    weights_source="any CIFAR ResNet state dict; depth is read from the weights", **_CIFAR,
)(build_resnet_cifar)
