"""General-purpose compressor baseline: the fp16 bytes of the tensor through zstandard."""

from __future__ import annotations

import math

import numpy as np
import zstandard

from .base import Codec, Param
from .errors import BitstreamError, DecodeLimits, require
from .floats import FP16_MAX, Float16Codec
from .registry import register_codec

#: most bytes one zstd block produces (the format's limit); a block takes at least 3 bytes
MAX_BLOCK = 1 << 17


@register_codec("zstd", codec_id=6)
class ZstdCodec(Codec):
    reusable = True
    params_spec = (Param("level", int, 3, low=-7, high=22, doc="zstandard level"),)

    def encode_array(self, x: np.ndarray) -> bytes:
        raw = np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()
        cctx = zstandard.ZstdCompressor(level=self.params["level"], write_content_size=True)
        return cctx.compress(raw)

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        n = math.prod(shape)
        try:
            size = zstandard.frame_content_size(bytes(payload[:18]))
        except zstandard.ZstdError as e:
            raise BitstreamError(f"zstd frame header: {e}") from None
        require(size == 2 * n, f"zstd frame declares {size} bytes, want {2 * n}")
        # no output buffer before the payload could fill it: a block takes >= 3 bytes
        require(2 * n <= MAX_BLOCK * (len(payload) // 3 + 1),
                f"zstd: {len(payload)} bytes cannot hold {2 * n} bytes")
        try:
            raw = zstandard.ZstdDecompressor().decompress(bytes(payload), max_output_size=2 * n)
        except zstandard.ZstdError as e:
            raise BitstreamError(f"zstd: {e}") from None
        require(len(raw) == 2 * n, "zstd output size mismatch")
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)

    error_bound = Float16Codec.error_bound
