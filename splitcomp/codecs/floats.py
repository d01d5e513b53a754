"""Plain float baselines: fp32 (lossless reference), fp16 and bf16 (what frameworks ship)."""

from __future__ import annotations

import math

import numpy as np

from .base import Codec, RawArray
from .errors import DecodeLimits, require
from .registry import register_codec

FP16_MAX = 65504.0


def _raw(payload: memoryview, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    n = math.prod(shape)
    require(len(payload) == n * itemsize, f"payload is {len(payload)} bytes, want {n * itemsize}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even, any NaN 0xFFFF: what
    torch's CPU conversion writes, bit for bit (``tests/edge/test_numpy_codecs.py``)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16  # uint32 arithmetic wraps like C's
    return np.where(np.isnan(x), np.uint32(0xFFFF), rounded).astype(np.uint16)


@register_codec("fp32", codec_id=1)
class Float32Codec(Codec):
    """The uncompressed reference: 32 bits per element, lossless for fp32/fp16/bf16 input."""

    reusable = True
    lossless = True

    def encode_array(self, x: np.ndarray) -> bytes:
        return x.astype("<f4", copy=False).tobytes()

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        return _raw(payload, shape, "<f4").astype(np.float32)

    def decode_raw(self, payload, shape, limits: DecodeLimits) -> RawArray:
        return RawArray(_raw(payload, shape, "<f4").reshape(-1), None, None, 1, tuple(shape))


@register_codec("fp16", codec_id=2)
class Float16Codec(Codec):
    """IEEE half precision, 16 bits per element; saturates at +-65504 instead of overflowing."""

    reusable = True

    def encode_array(self, x: np.ndarray) -> bytes:
        return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        return _raw(payload, shape, "<f2").astype(np.float32)

    def decode_raw(self, payload, shape, limits: DecodeLimits) -> RawArray:
        """The half values (converted on the runtime's device)."""
        return RawArray(_raw(payload, shape, "<f2").reshape(-1), None, None, 1, tuple(shape))

    def error_bound(self, x: np.ndarray) -> float:
        if x.size == 0:
            return 0.0
        m = float(np.max(np.abs(x)))
        return max(m - FP16_MAX, 0.0) + min(m, FP16_MAX) * 2.0**-11 + 2.0**-25


@register_codec("bf16", codec_id=3)
class BFloat16Codec(Codec):
    """bfloat16 (fp32 range, 8-bit mantissa), 16 bits per element, round to nearest even."""

    reusable = True

    def encode_array(self, x: np.ndarray) -> bytes:
        return _to_bf16_bits(x).astype("<u2", copy=False).tobytes()

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        bits = _raw(payload, shape, "<u2").astype(np.uint32)
        return (bits << 16).view(np.float32)

    def error_bound(self, x: np.ndarray) -> float:
        return float(np.max(np.abs(x))) * 2.0**-8 if x.size else 0.0
