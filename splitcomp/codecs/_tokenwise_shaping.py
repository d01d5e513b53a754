"""Fisher noise shaping for the ``tokenwise`` encoder: fewer bits at the same KL, decoder unchanged.

What a coded hidden state costs the server's next-token distribution is, to second order,
``KL ~ 1/2 e^T F e`` with ``e`` the coding error and ``F`` the Fisher matrix of the model's
output with respect to the hidden state at the cut. A scalar quantizer per channel leaves
``e`` white in the channel basis, so only ``diag(F)`` can be served by its steps, and on
SmolLM2's middle layer the diagonal is nearly flat (an AM-GM gap of 0.015 bit per element),
while ``F``'s eigenvalues are not (0.29 bit, 4,080 tokens). Rotating into ``F``'s eigenbasis
would serve them but mixes the heavy-tailed channels into Gaussian-looking ones, which costs
more than it saves (``docs/results/llm_bits.json``, rotations).

Shaping keeps the channel basis and the decoder: the encoder quantizes the channels in order
and moves each one's *target* by the errors already made on the earlier ones (successive
cancellation, as GPTQ/OBQ compensate a weight's rounding in the weights not yet rounded).
With ``F = L^T diag(p) L`` (``L`` unit lower triangular, the LDL of ``F`` in reverse order)

    e^T F e = sum_j p_j (e_j + sum_{k<j} L_jk e_k)^2

and choosing channel ``j``'s value to cancel the sum leaves each term its own rounding error,
weighted by the pivot ``p_j`` instead of ``F_jj``. The context's per-channel step weights are
set from the pivots (``w ~ p^-1/2``, :func:`calibrate` with ``fisher``), so their product is
``det F`` instead of ``prod F_jj``: the whole eigenvalue gap is available at high rate.
Measured: ~15 % less KL at the same bits, 0.08-0.1 bit per element fewer at KL 0.01
(``docs/results/llm_bits.json``, "shaped").

The feedback ``L`` is the encoder's alone: the decoder reads the same symbols, tables and
steps as ever, so the context's wire bytes (and id) do not carry it. A context *file* may
(:func:`file_bytes`): the context, then a sealed ``SCSH`` section with ``L``'s strict lower
triangle (float16, ``C (C - 1)`` bytes), then a trailer ``u32 section length, b"SCEX"``.
"""

from __future__ import annotations

import struct

import numpy as np

from .bytes_io import put_varint
from .contexts import seal, unseal
from .errors import require

#: how far the calibration Fisher matrix is shrunk toward its diagonal before its LDL (its
#: C^2 / 2 entries come from a few thousand noisy gradients; on SmolLM2 with 8k tokens, 0.5
#: coded 0.02-0.03 bit per element fewer at KL 0.01 than 0.05 or 0.2 did)
SHRINK = 0.5
MAGIC, VERSION = b"SCSH", 1
#: the last bytes of a context file that carries a shaping section
TRAILER = b"SCEX"


def fit_shaping(fisher: np.ndarray, shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """The feedback ``L`` (C, C), strictly lower triangular, float16-representable, and the
    pivots ``p`` (C,) of ``F = (L + I)^T diag(p) (L + I)`` for the Fisher matrix ``fisher``
    shrunk by ``shrink`` toward its diagonal."""
    f = np.asarray(fisher, np.float64)
    c = f.shape[0]
    if f.shape != (c, c) or not np.all(np.isfinite(f)):
        raise ValueError("fisher must be a finite square matrix")
    f = (f + f.T) / 2
    f = (1.0 - shrink) * f + shrink * np.diag(np.diag(f))
    f[np.diag_indices(c)] += 1e-9 * max(float(np.trace(f)) / c, 1e-30)
    rev = np.arange(c)[::-1]
    g = np.linalg.cholesky(f[np.ix_(rev, rev)])  # reversed: F_rev = G G^T
    unit = g / np.diag(g)[None, :]
    low = np.tril(unit.T[np.ix_(rev, rev)], -1)  # (I + low)^T diag(p) (I + low) = F
    pivots = (np.diag(g) ** 2)[rev]
    return np.clip(low, -60000, 60000).astype(np.float16).astype(np.float64), pivots


def shaped_error_bound(rounding: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Bounds (R, C) of each channel's decoding error under shaping, given the bound of its own
    rounding error ``rounding`` (R, C): its rounding plus the feedback it was moved by,
    ``|e_j| <= rounding_j + sum_{k<j} |fb_jk| |e_k|`` (the prediction cancels: closed loop)."""
    rounding = np.asarray(rounding, np.float64)
    out = np.zeros(rounding.shape)
    mag = np.abs(fb)
    for j in range(rounding.shape[1]):
        out[:, j] = rounding[:, j] + out[:, :j] @ mag[j, :j]
    return out


def section_bytes(fb: np.ndarray) -> bytes:
    """A context file's shaping section, trailer included (see the module docstring)."""
    c = fb.shape[0]
    out = bytearray(MAGIC)
    out.append(VERSION)
    put_varint(out, c)
    out += fb[np.tril_indices(c, -1)].astype("<f2").tobytes()
    body = seal(out)
    return body + struct.pack("<I", len(body)) + TRAILER


def split_file(data: bytes | bytearray | memoryview) -> tuple[memoryview, memoryview | None]:
    """A context file's bytes as (the context's, the shaping section's or None)."""
    view = memoryview(data).cast("B")
    if len(view) < 8 or bytes(view[-4:]) != TRAILER:
        return view, None
    (size,) = struct.unpack("<I", view[-8:-4])
    require(0 < size <= len(view) - 8, "tokenwise context file: bad shaping section length")
    return view[: len(view) - 8 - size], view[len(view) - 8 - size : len(view) - 8]


def section_from_bytes(data: memoryview, channels: int) -> np.ndarray:
    """The feedback (C, C) of a shaping section for a context of ``channels`` channels;
    BitstreamError if it is malformed or of another size."""
    _, r = unseal(data, MAGIC, VERSION, len(MAGIC) + 6, "tokenwise shaping")
    c = r.varint()
    require(c == channels, f"tokenwise shaping: {c} channels, the context has {channels}")
    require(r.remaining() == c * (c - 1), "tokenwise shaping: bad length")
    low = np.frombuffer(r.take(c * (c - 1)), "<f2").astype(np.float64)
    require(bool(np.all(np.isfinite(low))), "tokenwise shaping: not finite")
    fb = np.zeros((c, c))
    fb[np.tril_indices(c, -1)] = low
    return fb
