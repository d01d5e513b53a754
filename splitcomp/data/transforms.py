"""Image preprocessing in two steps: geometry on the PIL image (kept as uint8), then normalisation.

Keeping the uint8 result of the geometric step lets a dataset cache decoded images cheaply
(a quarter of the float size) and normalise whole batches at once. The resize and centre crop
follow torchvision's ``Resize(int)`` / ``CenterCrop`` arithmetic so that published accuracies
reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``(x_uint8 - 127) / 128``, the input scaling of TF-Lite style models, on the [0, 1] scale
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), keeping the aspect ratio."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (the image must be at least that large)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class Preprocess:
    """Image file -> normalised CHW float32 tensor: ``(x / 255 - mean) / std`` per channel.

    ``resize`` is the target of the shorter side, ``crop`` the centre-crop size; None skips
    the step (CIFAR images go in as they are).
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def load_uint8(self, source: str | Path | Image.Image) -> torch.Tensor:
        """Decode (if given a path), convert to RGB, resize and crop: a CHW uint8 tensor."""
        if isinstance(source, Image.Image):
            return self._geometry(source)
        with Image.open(source) as img:
            return self._geometry(img)

    def _geometry(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        if self.resize is not None:
            img = resize_shorter(img, self.resize)
        if self.crop is not None:
            img = center_crop(img, self.crop)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 CHW or NCHW -> float32 of the same shape, normalised per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1) * 255.0
        return (x.to(torch.float32) - mean) / std

    def __call__(self, source: str | Path | Image.Image) -> torch.Tensor:
        return self.normalize(self.load_uint8(source))


#: the usual ImageNet evaluation transform: resize 256, centre crop 224, ImageNet mean/std
IMAGENET_EVAL = Preprocess(resize=256, crop=224)
#: CIFAR images as they are, ImageNet mean/std (what the shared CIFAR ResNet weights expect)
CIFAR_EVAL = Preprocess()
