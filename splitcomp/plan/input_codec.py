"""Compress the input image instead of the features: JPEG / WebP of the (resized, cropped)
uint8 image, decoded on the server and run through the whole model.

Encoding, decoding and accuracy come from :mod:`splitcomp.bench.input_compression`; this
module walks the qualities the way :func:`splitcomp.bench.codec_eval.search_quality` walks a
codec's knob (from the best quality down, stopping after the first setting over the accuracy
budget, so the whole model runs only as often as needed) and counts the file as sent in a
splitcomp container (one uint8 tensor: header and CRC included), as the runtime would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import codecs
from ..bench import input_compression as ic
from ..data.transforms import Preprocess

#: the input formats the planner tries (lossy ones: PNG is never smaller than raw here)
INPUT_FORMATS: tuple[str, ...] = ("jpeg", "webp")


def container_bytes(payload_len: int) -> int:
    """Bytes of a splitcomp container carrying ``payload_len`` raw bytes as one uint8 tensor."""
    return len(codecs.get("fp32").encode([torch.zeros(payload_len, dtype=torch.uint8)]))


def sweep_input_codec(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      preprocess: Preprocess, fmt: str, max_drop: float,
                      qualities: Sequence[int] | None = None) -> list[dict]:
    """One row per quality tried (best first): ``{format, quality, wire_bytes, drop_pp,
    top1, encode_ms, decode_ms}``; stops after the first quality whose top-1 drop exceeds
    ``max_drop``."""
    grid = ic.DEFAULT_QUALITIES[fmt] if qualities is None else qualities
    base = ic.uncompressed_accuracy(model, images, labels, preprocess=preprocess)
    rows = []
    for q in sorted(grid, reverse=True):
        (r,) = ic.sweep_input_codec(model, images, labels, fmt, [q], preprocess=preprocess)
        file_bytes = round(r["bytes_per_sample"])
        wire = r["bytes_per_sample"] + container_bytes(file_bytes) - file_bytes
        drop = round(base - r["accuracy"], 4)
        rows.append({"format": fmt, "quality": q, "wire_bytes": wire, "drop_pp": drop,
                     "top1": r["accuracy"], "encode_ms": r["encode_ms"],
                     "decode_ms": r["decode_ms"]})
        if drop > max_drop:
            break
    return rows
