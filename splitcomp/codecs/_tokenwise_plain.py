"""The ``tokenwise`` codec's self-contained mode (``context=0``): rows along the last axis, each
with a float32 step ``2**(level / 8) * median|row|`` (at least ``max|row| * 2**-20``), symbols
``rint(x / step)`` coded by :func:`.entropy.encode_symbols` with a table in the stream
(``docs/bitstream.md``, section "tokenwise", "Self-contained mode")."""

from __future__ import annotations

import math
import struct

import numpy as np

from .entropy import decode_symbol_indices, encode_symbols
from .entropy.tables import _log2_table, _symbols_cap, rows_kernels
from .errors import require

#: largest symbol magnitude the mode writes or accepts (the codec's)
Q_MAX = 1 << 28
#: a row step on the wire: a little-endian float32
_F32 = struct.Struct("<f")
#: the smallest row step a self-contained stream carries (float32's smallest subnormal): a
#: row's step that rounds to 0 in float32 becomes this, so every stream written decodes
_STEP_MIN = np.float32(np.finfo(np.float32).smallest_subnormal)
_F32_MAX = np.finfo(np.float32).max


def _top_median(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest value and ``np.median`` of the rows of ``a`` (r, c), c > 0, by one
    partition of ``a`` in place (np.median's, its last order statistic the row's largest:
    NaN where the row has one); the median is computed as np.median computes it (the mean
    of the middle one or two, in float32), so the same bits, NaN rows aside."""
    c = a.shape[1]
    h = c // 2
    a.partition((h, c - 1) if c % 2 else (h - 1, h, c - 1), axis=1)
    if c % 2:
        return a[:, -1], a[:, h]
    return a[:, -1], (a[:, h - 1] + a[:, h]) / 2


def _finite(out: np.ndarray) -> np.ndarray:
    """``out`` with values that overflowed float32 (a step times its symbol: a value within
    half a step of float32's largest, rounded up, or a hostile stream) saturated to
    float32's largest, in place: a decoder never returns inf."""
    if not np.isfinite(out).all():
        np.clip(out, -_F32_MAX, _F32_MAX, out=out)
    return out


def row_steps(x2: np.ndarray, step: float) -> np.ndarray:
    """Each row's float32 step (from its median and largest magnitude)."""
    if not x2.shape[1]:
        top = np.zeros(x2.shape[0], np.float32)
        return steps_of(top, top, step)
    return steps_of(*_top_median(np.abs(x2)), step)

def steps_of(top: np.ndarray, med: np.ndarray, step: float) -> np.ndarray:
    s = np.maximum(med, top * 2.0**-20).astype(np.float64) * step
    s[~(s > 0)] = 1.0
    out = np.minimum(s, 3e38).astype(np.float32)
    out[out == 0] = _STEP_MIN  # a row of subnormals at a low level: never a step of 0
    return out

def encode(x2: np.ndarray, step: float) -> bytes:
    """Row steps and the zigzagged symbols ``rint(x / step)``; ValueError for NaN or inf
    (found as a row's largest magnitude, which the steps need anyway)."""
    top, med = _top_median(np.abs(x2))
    if x2.shape[0] == 1:  # a decode step's token: steps_of in Python scalars
        t, m = top[0], med[0]  # float32 scalars
        if not math.isfinite(t):
            raise ValueError("tokenwise: input contains NaN or inf")
        s = float(max(m, t * 2.0**-20)) * step  # float32 maximum, float64 product
        steps = np.array([min(s, 3e38) if s > 0 else 1.0], np.float32)
        if steps[0] == 0:  # below float32's smallest subnormal: see steps_of
            steps[0] = _STEP_MIN
        head = _F32.pack(steps[0])
    else:
        if not np.isfinite(top).all():
            raise ValueError("tokenwise: input contains NaN or inf")
        steps = steps_of(top, med, step)
        head = steps.astype("<f4").tobytes()
    kern = rows_kernels()
    lg = _log2_table(x2.size + 1) if kern is not None else None
    if lg is not None and x2.dtype == np.float32 and x2.flags.c_contiguous \
            and x2.flags.writeable:  # quotients to bytes in one compiled pass
        status, data = kern.encode_scaled(x2, steps, _symbols_cap(x2.size), lg)
        if status == 0:
            return head + data.tobytes()
    y = x2 / steps[:, None]
    q = np.rint(y, out=y).astype(np.int64)
    u = (q << 1) ^ (q >> 63)  # zigzag: 2q or -2q - 1, as int64 arithmetic gives them
    return head + encode_symbols(u.reshape(-1))

def decode(payload: memoryview, r: int, c: int) -> np.ndarray:
    require(len(payload) >= 4 * r, "tokenwise: truncated steps")
    steps = np.frombuffer(payload, "<f4", r).astype(np.float32)
    if r == 1:  # a decode step's token: a scalar check is faster than numpy calls
        require(math.isfinite(steps[0]) and steps[0] > 0, "tokenwise: bad step")
    else:
        require(bool(np.all(np.isfinite(steps) & (steps > 0))), "tokenwise: bad step")
    kern = rows_kernels()
    if kern is not None:  # symbols to values in one compiled pass (the same float32s)
        buf = np.frombuffer(payload, np.uint8)
        status, out = kern.decode_scaled(buf, 4 * r, buf.size, steps, c, 2 * Q_MAX,
                                         _symbols_cap(r * c))
        if status == 0:
            return _finite(out.reshape(r, c))
        # corrupt: the reference below raises its error and message
    alphabet, idx = decode_symbol_indices(payload[4 * r :], r * c, max_symbol=2 * Q_MAX)
    levels = ((alphabet >> 1) ^ -(alphabet & 1)).astype(np.float32)  # unzigzag
    with np.errstate(over="ignore"):
        if r == 1:
            levels *= steps[0]  # scaled per symbol of the alphabet, then gathered
            return _finite(levels[idx].reshape(1, c))
        out = levels[idx].reshape(r, c)  # 8 bytes an element
        out *= steps[:, None]
    return _finite(out)
