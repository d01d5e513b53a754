"""8-bit asymmetric quantization with a float scale and an integer zero point.

Per tensor, or per slice along ``axis`` (channels of a CNN feature map: axis 1; tokens of
an LLM hidden state: axis -2 or per feature: -1). The range always contains 0, so exact
zeros (ReLU outputs) decode to exact zeros.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Codec, Param, RawArray
from .errors import DecodeLimits, require
from .registry import register_codec


def _channels_view(x: np.ndarray, axis: int | None) -> np.ndarray:
    """2-D view (channels, rest) of ``x`` for per-channel statistics."""
    if axis is None or x.ndim == 0:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


@register_codec("int8", codec_id=4)
class Int8Codec(Codec):
    """Scale / zero-point uint8 quantization (8 bits per element plus 5 bytes per channel)."""

    reusable = True
    params_spec = (
        Param("per_channel", bool, False, doc="one scale per slice along axis"),
        Param("axis", int, 1, low=-8, high=7, doc="channel axis when per_channel"),
    )

    def _axis(self, ndim: int) -> int | None:
        if not self.params["per_channel"] or ndim == 0:
            return None
        a = self.params["axis"]
        return a % ndim if -ndim <= a < ndim else None

    def _qparams(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ch = _channels_view(x, self._axis(x.ndim))
        if ch.shape[1] == 0:
            n = ch.shape[0]
            return np.ones(n, np.float32), np.zeros(n, np.uint8)
        lo = np.minimum(ch.min(axis=1), 0.0).astype(np.float64)
        hi = np.maximum(ch.max(axis=1), 0.0).astype(np.float64)
        scale = ((hi - lo) / 255.0).astype(np.float32)
        scale[scale <= 0] = 1.0
        zp = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
        return scale, zp

    def encode_array(self, x: np.ndarray) -> bytes:
        axis = self._axis(x.ndim)
        scale, zp = self._qparams(x)
        shape = (-1,) + (1,) * (x.ndim - 1) if axis is not None else ()
        moved = np.moveaxis(x, axis, 0) if axis is not None else x
        q = np.clip(np.round(moved / scale.reshape(shape)) + zp.reshape(shape), 0, 255)
        q = q.astype(np.uint8)
        return scale.astype("<f4").tobytes() + zp.tobytes() + q.tobytes()

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        return self.decode_raw(payload, shape, limits).dequantize()

    def decode_raw(self, payload, shape, limits: DecodeLimits) -> RawArray:
        """The uint8 values (channel axis first when per channel), scales and zero points."""
        ndim = len(shape)
        axis = self._axis(ndim)
        n_ch = shape[axis] if axis is not None else 1
        n = math.prod(shape)
        require(len(payload) == 5 * n_ch + n, "int8 payload size mismatch")
        scale = np.frombuffer(payload[: 4 * n_ch], "<f4").astype(np.float32)
        zp = np.frombuffer(payload[4 * n_ch : 5 * n_ch], np.uint8).astype(np.float32)
        require(bool(np.all(np.isfinite(scale))), "int8 scale not finite")
        moved_shape = shape
        if axis is not None:
            moved_shape = (shape[axis], *shape[:axis], *shape[axis + 1 :])
        values = np.frombuffer(payload[5 * n_ch :], np.uint8)
        return RawArray(values, scale, zp, n // n_ch if n_ch else 1, moved_shape, axis)

    def error_bound(self, x: np.ndarray) -> float:
        if x.size == 0:
            return 0.0
        scale, _ = self._qparams(x)
        return float(scale.max()) * 0.5 * (1 + 1e-5) + 1e-30
