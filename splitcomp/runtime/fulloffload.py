"""Full offload: the server runs the whole model on the image the edge sends.

Raw pixels (:func:`full_offload_deployment`, the planner's ``offload`` plan): the client sends
the image as the model sees it before normalisation, CHW uint8 pixels after resize and centre
crop (3x224x224 = 150,528 bytes for ImageNet models), carried bit-exact by the ``fp32`` codec
(which passes non-float tensors through raw). The server normalises and runs the whole model.

A compressed image (:class:`ImageInputDeployment`, the planner's ``input`` plan): the client
sends the JPEG or WebP *file* of that resized and cropped image, as one ``(1, N)`` uint8
tensor of the file's bytes in the same raw container (:func:`image_request`; what the planner
counts as sent); the server checks the file's format and size from its header before
decoding it (a file of another size or format is refused, not decoded), then runs the whole
model on the decoded pixels, batching images from several requests together.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import codecs as _codecs
from ..codecs import DecodeLimits
from ..data.transforms import Preprocess
from .deployment import Deployment, InputSpec
from .errors import RequestError
from .protocol import ErrorCode

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


#: compressed-input formats a deployment can decode, with Pillow's names for them
IMAGE_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}


def image_request(data: bytes) -> bytes:
    """An image file as a request bitstream: its bytes as one ``(1, N)`` uint8 tensor in the
    raw (``fp32``) codec's container, as an :class:`ImageInputDeployment` takes it."""
    payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(1, -1)
    return _codecs.get(FULL_OFFLOAD_CODEC).encode([payload])


def decode_image_file(data: bytes, formats: Sequence[str], size: tuple[int, ...]) -> torch.Tensor:
    """The CHW uint8 pixels of an image file of one of ``formats`` whose (C, H, W) is
    ``size``; format and size are read from the header first. Raises :class:`RequestError`
    (BAD_BITSTREAM: not such a file or damaged; BAD_INPUT: another size)."""
    channels, height, width = size
    names = [IMAGE_FORMATS[f] for f in formats]
    try:
        with Image.open(io.BytesIO(data), formats=names) as img:
            if img.size != (width, height):
                raise RequestError(ErrorCode.BAD_INPUT, f"a {img.size[0]}x{img.size[1]} image; "
                                   f"this deployment takes {width}x{height} (resize and crop "
                                   "on the edge)")
            arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(ErrorCode.BAD_BITSTREAM, f"not a {'/'.join(formats)} image of "
                           f"{width}x{height}: {e}"[:300]) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageInputDeployment(Deployment):
    """The whole ``model`` on compressed images: each request is one image file (of
    ``formats``, e.g. ``("jpeg",)``) of ``input_size`` (C, H, W) in :func:`image_request`'s
    container; the answer is the model's output, as for any deployment.
    ``max_file_bytes``: the largest file taken (default: four times the raw pixels plus
    64 KiB, more than any JPEG or WebP of such an image)."""

    def __init__(self, name: str, model: nn.Module, preprocess: Preprocess,
                 input_size: tuple[int, ...], formats: Sequence[str] = ("jpeg",), *,
                 max_file_bytes: int | None = None, **options: Any) -> None:
        unknown = [f for f in formats if f not in IMAGE_FORMATS]
        if unknown or not formats:
            raise ValueError(f"image formats {list(formats)}: each one of "
                             f"{', '.join(IMAGE_FORMATS)}")
        if len(input_size) != 3:
            raise ValueError(f"input_size {input_size}: expected (C, H, W)")
        self.formats = tuple(formats)
        self.input_size = tuple(int(v) for v in input_size)
        limit = max_file_bytes or 4 * int(np.prod(self.input_size)) + (64 << 10)
        options.setdefault("codecs", [FULL_OFFLOAD_CODEC])
        options.setdefault("limits", DecodeLimits(max_elements=limit, max_tensors=1,
                                                  max_ndim=2, max_bytes=limit + 4096))
        model.eval()
        super().__init__(name, PixelsToLogits(model, preprocess),
                         input_specs=[InputSpec(torch.uint8, None, 2)], max_request_samples=1,
                         **options)

    def decode(self, data: bytes | memoryview) -> tuple[torch.Tensor, ...]:
        """The request's file (its container checked as for any deployment) decoded to one
        (1, C, H, W) uint8 image."""
        (payload,) = super().decode(data)
        pixels = decode_image_file(payload.numpy().tobytes(), self.formats, self.input_size)
        return (pixels.unsqueeze(0),)


def zoo_image_input(model_name: str, formats: Sequence[str] = ("jpeg",), *,
                    weights: str | None = "default", name: str | None = None,
                    model: nn.Module | None = None, **options: Any) -> ImageInputDeployment:
    """A zoo image model served whole on compressed images (named ``name`` or
    ``<model>-<format>``)."""
    from ..zoo import load_model, model_config

    cfg = model_config(model_name)
    if cfg.input_size is None:
        raise ValueError(f"{model_name} does not take images")
    if model is None:
        model = load_model(model_name, None if weights == "default" else (weights or "random"))
    return ImageInputDeployment(name or f"{model_name}-{formats[0]}", model, cfg.preprocess(),
                                tuple(cfg.input_size), formats, **options)
