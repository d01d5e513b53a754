"""Images -> the head's input with numpy and Pillow: the same float32 values as
``splitcomp.data.transforms.Preprocess`` (same geometry, same float32 arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .manifest import InputSpec

ImageLike = str | Path | np.ndarray | Image.Image


def _geometry(img: Image.Image, spec: InputSpec) -> np.ndarray:
    img = img.convert("RGB")
    if spec.resize is not None:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short != spec.resize:
            new_long = int(spec.resize * long / short)
            new = (spec.resize, new_long) if w <= h else (new_long, spec.resize)
            img = img.resize(new, Image.Resampling.BILINEAR)
    if spec.crop is not None:
        w, h = img.size
        if w < spec.crop or h < spec.crop:
            raise ValueError(f"image {w}x{h} is smaller than the crop {spec.crop}")
        top, left = int(round((h - spec.crop) / 2.0)), int(round((w - spec.crop) / 2.0))
        img = img.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(img, dtype=np.uint8)


def load_uint8(image: ImageLike, spec: InputSpec) -> np.ndarray:
    """One image (a path, a PIL image, or an HWC uint8 RGB array) -> HWC uint8 of the
    model's input size."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            out = _geometry(img, spec)
    elif isinstance(image, Image.Image):
        out = _geometry(image, spec)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array is HWC uint8 RGB, got {image.dtype} "
                             f"{tuple(image.shape)}")
        want = tuple(spec.size[1:])
        out = image if image.shape[:2] == want else _geometry(Image.fromarray(image), spec)
    else:
        raise TypeError(f"not an image: {type(image).__name__}")
    if out.shape != (*spec.size[1:], spec.size[0]):
        raise ValueError(f"image of {out.shape[1]}x{out.shape[0]} after resizing and cropping; "
                         f"the model takes {spec.size[2]}x{spec.size[1]}")
    return out


def as_batch(images: Any, spec: InputSpec) -> np.ndarray:
    """One image or a batch (NHWC uint8 array, or a sequence of images) -> NHWC uint8."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return np.stack([load_uint8(i, spec) for i in images])
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images:
            raise ValueError("an empty batch")
        return np.stack([load_uint8(i, spec) for i in images])
    return load_uint8(images, spec)[None]


def normalize(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """NHWC uint8 -> the head's float32 input (NCHW), normalised per channel."""
    x = batch.astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32) * np.float32(255.0)
    std = np.asarray(spec.std, dtype=np.float32) * np.float32(255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if spec.layout == "NCHW" else x
