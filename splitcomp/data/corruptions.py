"""Distribution shifts in the style of CIFAR-10-C (Hendrycks & Dietterich 2019), on uint8 images.

Four corruptions at severities 1-5, with the published CIFAR-10-C parameters: Gaussian noise
(standard deviation of pixels in [0, 1]), defocus blur (a disk kernel of a radius, then a
Gaussian), contrast (pixels pulled toward their channel means), JPEG (quality). A shift is
named ``NAME:SEVERITY`` (``gaussian_noise:3``). Noise is seeded per image by its file name,
so an image gets the same corruption in any subset or order.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .dataset import ImageFolderDataset

_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)
_DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_JPEG = (80, 65, 58, 50, 40)


def _gaussian_noise(x: torch.Tensor, level: int, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.normal(0.0, _NOISE[level], x.shape).astype(np.float32))
    return x + noise


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """CIFAR-10-C's kernel: a normalised disk of ``radius``, blurred by a 3x3 Gaussian."""
    size = int(np.ceil(radius)) + 1
    r = np.arange(-size, size + 1)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-np.arange(-1, 2, dtype=np.float32) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    gauss = torch.from_numpy(np.outer(g, g).astype(np.float32))[None, None]
    return F.conv2d(torch.from_numpy(disk)[None, None], gauss, padding=1)


def _defocus_blur(x: torch.Tensor, level: int, rng: np.random.Generator) -> torch.Tensor:
    k = _disk(*_DEFOCUS[level])
    pad = k.shape[-1] // 2
    c = x.shape[0]
    xp = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(xp, k.expand(c, 1, -1, -1).contiguous(), groups=c)[0]


def _contrast(x: torch.Tensor, level: int, rng: np.random.Generator) -> torch.Tensor:
    means = x.mean(dim=(1, 2), keepdim=True)
    return (x - means) * _CONTRAST[level] + means


def _jpeg(x: torch.Tensor, level: int, rng: np.random.Generator) -> torch.Tensor:
    img = Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=_JPEG[level])
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(back.copy()).permute(2, 0, 1).float() / 255


#: name -> f(image in [0, 1] (C, H, W) float, severity index 0-4, generator) -> image
CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise, "defocus_blur": _defocus_blur,
    "contrast": _contrast, "jpeg_compression": _jpeg}


def parse_shift(text: str) -> tuple[str, int]:
    """``NAME:SEVERITY`` -> (name, severity 1-5) (ValueError with what is allowed)."""
    name, _, sev = text.partition(":")
    name = {"jpeg": "jpeg_compression"}.get(name, name)
    if name not in CORRUPTIONS:
        raise ValueError(f"shift {text!r}: corruption one of {', '.join(CORRUPTIONS)}")
    if sev not in {"1", "2", "3", "4", "5"}:
        raise ValueError(f"shift {text!r}: severity 1-5 after ':' (e.g. {name}:3)")
    return name, int(sev)


def corrupt_uint8(img: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """One CHW uint8 image under corruption ``name`` at ``severity`` (1-5)."""
    rng = np.random.default_rng(seed)
    out = CORRUPTIONS[name](img.float() / 255, severity - 1, rng)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def _name(path: Path) -> bytes:
    return f"{path.parent.name}/{path.name}".encode()


def corrupted(ds: ImageFolderDataset, name: str, severity: int, seed: int = 0
              ) -> ImageFolderDataset:
    """A copy of ``ds`` whose images carry the corruption (all decoded and corrupted now;
    each image's noise seeded by ``seed`` and its class folder and file name)."""
    CORRUPTIONS[name]  # KeyError early for a wrong name
    out = ds.subset(range(len(ds)))
    out.cache = True
    out._decoded = [
        corrupt_uint8(ds.image_uint8(i), name, severity,
                      seed ^ zlib.crc32(_name(ds.samples[i][0]) + bytes([severity])))
        for i in range(len(ds))]
    return out
