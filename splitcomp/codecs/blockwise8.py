"""Blockwise absmax 8-bit quantization, as Petals ships hidden states between servers.

The flattened tensor is cut into blocks of ``block`` values; each block stores its absmax
(float32) and ``round(127 * x / absmax)`` as int8: 8 + 32/block bits per element.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Codec, Param, RawArray
from .errors import DecodeLimits, require
from .registry import register_codec


@register_codec("blockwise8", codec_id=5)
class Blockwise8Codec(Codec):
    reusable = True
    params_spec = (Param("block", int, 64, low=1, high=1 << 20, doc="values per absmax scale"),)

    def _blocks(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        b = self.params["block"]
        flat = x.reshape(-1)
        n = flat.size
        pad = (-n) % b
        if pad:
            flat = np.concatenate([flat, np.zeros(pad, np.float32)])
        return flat.reshape(-1, b), n

    def encode_array(self, x: np.ndarray) -> bytes:
        blocks, _ = self._blocks(x)
        absmax = np.abs(blocks).max(axis=1) if blocks.size else np.zeros(0, np.float32)
        safe = np.where(absmax > 0, absmax, 1.0).astype(np.float32)
        q = np.clip(np.round(blocks * (127.0 / safe[:, None])), -127, 127).astype(np.int8)
        n = x.size
        return absmax.astype("<f4").tobytes() + q.reshape(-1)[:n].tobytes()

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        return self.decode_raw(payload, shape, limits).dequantize()

    def decode_raw(self, payload, shape, limits: DecodeLimits) -> RawArray:
        """The int8 values and one scale (absmax / 127) per block."""
        b = self.params["block"]
        n = math.prod(shape)
        n_blocks = -(-n // b)
        require(len(payload) == 4 * n_blocks + n, "blockwise8 payload size mismatch")
        absmax = np.frombuffer(payload[: 4 * n_blocks], "<f4").astype(np.float32)
        require(bool(np.all(np.isfinite(absmax))), "blockwise8 scale not finite")
        values = np.frombuffer(payload[4 * n_blocks :], np.int8)
        return RawArray(values, absmax / 127.0, None, b, tuple(shape))

    def error_bound(self, x: np.ndarray) -> float:
        if x.size == 0:
            return 0.0
        blocks, _ = self._blocks(x)
        return float(np.abs(blocks).max()) / 254.0 * (1 + 1e-5) + 1e-30
