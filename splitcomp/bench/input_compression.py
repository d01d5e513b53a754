"""Input-compression baseline (sc2bench): compress the *image*, run the whole model remotely.

The edge sends the image after its geometric preprocessing (resize and crop, the uint8 tensor a
dataset caches) as a JPEG or WebP file; the server decodes it, normalises it and runs the full
model. Bytes are the exact lengths of the encoded files (no container around them: an image
file is already self-describing). Normalisation happens here, outside the model, exactly as the
datasets do it, so accuracies are comparable with the feature codecs on the same images.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import nn

from ..data.transforms import Preprocess

#: Pillow format name and keyword arguments of each input codec
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    # 4:4:4 and optimised Huffman tables: on small images Pillow's defaults (4:2:0, stock
    # tables) cost up to 3x the bytes at the same accuracy, so this is the fairer baseline
    "jpeg": ("JPEG", {"subsampling": 0, "optimize": True}),
    "webp": ("WEBP", {"method": 4}),
    "png": ("PNG", {"compress_level": 9}),  # lossless: quality is ignored
}
#: formats whose quality setting changes nothing
LOSSLESS = frozenset({"png"})
#: default quality grids, lowest rate first
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {
    "jpeg": (10, 20, 30, 50, 70, 80, 90, 95, 100),
    "webp": (5, 10, 20, 30, 50, 70, 90, 100),
    "png": (0,),
}


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a CHW uint8 image with 1 or 3 channels, got "
                         f"{tuple(image.shape)} {image.dtype}")
    arr = image.permute(1, 2, 0).contiguous().numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def encode_image(image: torch.Tensor, fmt: str, quality: int = 0) -> bytes:
    """One CHW uint8 image -> the bytes of a ``fmt`` file at ``quality`` (ignored for png)."""
    try:
        pil_format, kwargs = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown input codec {fmt!r}; available: {', '.join(FORMATS)}") from None
    if fmt not in LOSSLESS:
        kwargs = {**kwargs, "quality": int(quality)}
    buf = io.BytesIO()
    pil = Image.fromarray(_as_hwc(image))
    # an optimised JPEG is written in one shot into a buffer Pillow sizes at about one byte per
    # pixel, too small at high quality with 4:4:4 ("broken data stream"): make it ample
    before = ImageFile.MAXBLOCK
    ImageFile.MAXBLOCK = max(before, 4 * pil.size[0] * pil.size[1] + 65536)
    try:
        pil.save(buf, format=pil_format, **kwargs)
    finally:
        ImageFile.MAXBLOCK = before
    return buf.getvalue()


def decode_image(data: bytes, channels: int = 3) -> torch.Tensor:
    """Image file bytes -> CHW uint8 tensor."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.array(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def raw_bytes_per_sample(images: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Bytes of one uncompressed uint8 input (full offload without compression)."""
    return math.prod(images[0].shape)


def _preprocess_of(model: nn.Module, preprocess: Preprocess | None) -> Preprocess:
    if preprocess is not None:
        return preprocess
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise ValueError("model has no default_cfg: pass preprocess= (its normalisation)")
    return cfg.preprocess()


@torch.inference_mode()
def _top1(model: nn.Module, images: Sequence[torch.Tensor], labels: torch.Tensor,
          preprocess: Preprocess, batch_size: int) -> float:
    hits = 0
    for s in range(0, len(images), batch_size):
        x = preprocess.normalize(torch.stack(list(images[s : s + batch_size])))
        hits += int((model(x).argmax(-1) == labels[s : s + batch_size]).sum())
    return 100.0 * hits / len(images)


def uncompressed_accuracy(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                          labels: torch.Tensor, *, preprocess: Preprocess | None = None,
                          batch_size: int = 128) -> float:
    """Top-1 (%) of the full model on the uint8 images as they are (the reference)."""
    return _top1(model, images, labels, _preprocess_of(model, preprocess), batch_size)


def sweep_input_codec(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    fmt: str,
    qualities: Sequence[int] | None = None,
    *,
    batch_size: int = 128,
    preprocess: Preprocess | None = None,
) -> list[dict[str, Any]]:
    """Accuracy of the full model on images sent as ``fmt`` files at each quality.

    ``images``: CHW uint8 images after the geometric preprocessing (``dataset.image_uint8(i)``),
    as an NCHW tensor or a sequence; the model's own normalisation (``model.default_cfg``, or
    ``preprocess``) is applied after decoding. One row per quality, in the given order:
    ``codec``, ``quality``, ``bytes_per_sample`` (exact mean file length), ``accuracy`` (top-1
    %), ``encode_ms`` and ``decode_ms`` (mean per image), ``bits_per_element`` (per uint8 input
    value) and ``n_images``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown input codec {fmt!r}; available: {', '.join(FORMATS)}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("need as many labels as images, and at least one image")
    qualities = DEFAULT_QUALITIES[fmt] if qualities is None else qualities
    prep = _preprocess_of(model, preprocess)
    n = len(images)
    elements = math.prod(images[0].shape)
    rows = []
    for q in qualities:
        total = 0
        t_enc = t_dec = 0.0
        decoded = []
        for img in images:
            t0 = time.perf_counter()
            data = encode_image(img, fmt, q)
            t1 = time.perf_counter()
            decoded.append(decode_image(data, channels=img.shape[0]))
            t_dec += time.perf_counter() - t1
            t_enc += t1 - t0
            total += len(data)
        rows.append({
            "codec": fmt,
            "quality": q,
            "bytes_per_sample": total / n,
            "accuracy": _top1(model, decoded, labels, prep, batch_size),
            "encode_ms": 1e3 * t_enc / n,
            "decode_ms": 1e3 * t_dec / n,
            "bits_per_element": 8.0 * total / (n * elements),
            "n_images": n,
        })
    return rows


def match_accuracy(
    rows: Sequence[dict[str, Any]], baseline_accuracy: float, max_drop_pp: float, *,
    monotone: bool = False,
) -> dict[str, Any] | None:
    """The lowest-rate row whose accuracy is within ``max_drop_pp`` of the baseline, or None.

    ``monotone=True`` walks down from the highest rate and stops at the first row that misses
    (as :func:`~.codec_eval.search_quality` does), so a lucky low-rate row below a failing one is
    not picked: accuracy on a few hundred images is noisy.
    """
    ordered = sorted(rows, key=lambda r: r["bytes_per_sample"])
    if not monotone:
        ok = [r for r in ordered if baseline_accuracy - r["accuracy"] <= max_drop_pp]
        return ok[0] if ok else None
    best = None
    for r in reversed(ordered):
        if baseline_accuracy - r["accuracy"] > max_drop_pp:
            break
        best = r
    return best
