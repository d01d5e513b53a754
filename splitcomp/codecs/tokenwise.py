"""Token-wise codec for LLM hidden states: static per-channel model, sent once per session.

A decode step sends one token's hidden state (1, 1, H): a few hundred values, too few to
carry their own statistics (a step, a range, a frequency table) without the side information
costing as much as the values. This codec moves everything static into a *session context*
(:mod:`._tokenwise_context`): learned once from a few hundred calibration tokens, sent once,
held at both ends, and named by every per-token bitstream with a 20-bit id. What a token
then costs is its quantized values under per-channel entropy tables and nothing else.

Quantization (context mode, ``context`` = a context's id): per channel ``j`` a centre
``mu_j`` and a step ``D_j = 2**(level / 8) * S * w_j * f_t**alpha`` (``S`` the calibration
median |x - mu|; ``w_j`` 1 unless calibrated with sensitivities; ``f_t`` the token's own scale,
moving the step only when the context says ``alpha > 0``; it always selects the tables,
and costs a few bits as a symbol of its own), symbols ``q = sign(u) floor(|u| + 1/2 - theta)``
of ``u = (x - mu) / D``, unbounded: a value beyond its channel's alphabet (the attention-sink
token's massive activations) is an escape and follows as a varint, so nothing is clipped and
the error is at most ``D_j / 2`` everywhere. Decoded: ``mu + (q - sign(q) delta_j) D``.
Symbols are rANS-coded with per-channel tables derived from the context's quantile knots for
this ``level`` (and token scale), so changing the rate needs no new context. A context with
the trellis flag codes each row by trellis-coded quantization instead
(:mod:`._tokenwise_trellis`: two quantizers half a step apart, a Viterbi search). Calibration
picks one uniform static step (why, and what it costs: ``docs/results/codecs.md``, section
"tokenwise").

Self-contained mode (``context=0``, the default; any tensor; :mod:`._tokenwise_plain`): rows
along the last axis, each with a float32 step ``2**(level / 8) * median|row|`` (at least
``max|row| * 2**-20``), symbols ``rint(x / step)`` coded by :func:`.entropy.encode_symbols`
with a table in the stream.

Decoding work (context mode) is bounded by the bytes sent: each row may name another scale
code, whose tables cost time and memory to build (up to ~0.1 s and 16 MB for 4096 channels)
and to read (every row), so a stream whose work (:func:`stream_work`: builds of its distinct
codes, rows read) exceeds :func:`work_budget` of its payload is refused with
:class:`~.errors.BitstreamError` before the build that would pass it; the encoder refuses
(ValueError) to write such a stream, so a real one is never refused.

Payload layout of both modes: ``docs/bitstream.md``, section "tokenwise".
"""

from __future__ import annotations

import math

import numpy as np

from . import _tokenwise_plain as plain
from . import _tokenwise_temporal as temporal_mod
from . import _tokenwise_trellis as trellis_mod
from ._tokenwise_alloc import GAIN, Allocation, fit_allocation
from ._tokenwise_context import (
    CONTEXTS,
    TokenwiseContext,
    calibrate,
    context_id,
    fit_offsets,
    get_context,
    load_context_file,
    register_context,
    registered_context,
    save_context,
)
from ._tokenwise_plain import Q_MAX  # the largest symbol magnitude either mode writes
from ._tokenwise_shaping import shaped_error_bound
from ._tokenwise_temporal import (
    MAX_RANK,
    PREVIOUS_ROW,
    RANK,
    Temporal,
    fit_temporal,
    residual_rows,
)
from .base import Param, SessionContextCodec
from .bytes_io import Reader
from .entropy import (
    AnsReader,
    AnsWriter,
    Model,
    categorical,
    put_varints,
    read_varints,
)
from .errors import DecodeLimits, require
from .registry import register_codec

__all__ = [
    "CONTEXTS",
    "GAIN",
    "MAX_RANK",
    "PREVIOUS_ROW",
    "RANK",
    "Allocation",
    "Temporal",
    "TokenwiseCodec",
    "TokenwiseContext",
    "calibrate",
    "context_id",
    "fit_allocation",
    "fit_offsets",
    "fit_temporal",
    "get_context",
    "load_context_file",
    "register_context",
    "registered_context",
    "residual_rows",
    "save_context",
]

#: the bytes of an escaped value's zigzag varint (<= 2 Q_MAX) at most
_VARINT_MAX = 5
_BYTE_MODEL: list = []  # their model in a context-mode payload's rANS stack (built once)


def _byte_model() -> Model:
    """Uniform over 256: 8 bits a byte, as raw bytes would cost."""
    if not _BYTE_MODEL:
        _BYTE_MODEL.append(categorical(np.ones(256)))
    return _BYTE_MODEL[0]
#: rows (tokens) a context-mode payload may hold per byte: a decoder's work stays bounded by
#: the bytes it was sent, whatever the claimed shape (real tokens cost ~100x that)
ROWS_PER_BYTE = 4
#: decoding work, in units of one table probability read by the rANS decoder (~2 ns here):
#: building a table costs BUILD_CELL per probability plus BUILD_CHANNEL per channel (its
#: Python loop), reading a row costs one per probability of its tables
BUILD_CELL, BUILD_CHANNEL = 32, 800
#: the work any stream may cost (~0.25 s: a few builds of the largest tables), and per byte
#: of payload on top (a real token pays ~50x less per byte)
FREE_WORK, WORK_PER_BYTE = 1 << 27, 1 << 13


def work_budget(payload_bytes: int) -> int:
    """The decoding work a context-mode payload of this size may cost."""
    return FREE_WORK + WORK_PER_BYTE * payload_bytes


def stream_work(ctx: TokenwiseContext, level: int, codes: np.ndarray,
                offsets: np.ndarray | None = None) -> int:
    """The decoding work of rows with scale ``codes`` at ``level`` (with allocation, each row
    at ``level`` plus its offset): each distinct table set built once (whether cached or not:
    the figure depends on the stream alone) and read once per row (in a trellis context, the
    table pair of :mod:`._tokenwise_trellis`), and with a predictor each row's reconstruction."""
    work = ctx.reconstruction_work(len(codes))
    levels = np.full(len(codes), level, np.int64) if offsets is None else level + offsets
    pairs, counts = np.unique(np.stack([levels, np.asarray(codes, np.int64)]), axis=1,
                              return_counts=True)
    keys: dict[tuple, int] = {}  # rows whose (level, code) name the same table set
    for (lv, code), rows in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        key = _key(ctx, lv, code)
        keys[key] = keys.get(key, 0) + rows
    for key, rows in keys.items():
        cells = ctx.cells_at(key)
        work += BUILD_CELL * cells + BUILD_CHANNEL * ctx.channels + rows * cells
    return work


def _key(ctx: TokenwiseContext, level: int, code: int) -> tuple:
    """The table key of a row at ``level`` (offset included) with scale ``code``: the
    context's :meth:`~TokenwiseContext.table_key`, that of the trellis pair in a trellis
    context."""
    key = ctx.table_key(level, code)
    return ("tcq", *key) if ctx.trellis else key


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, channels) of a tensor: channels along the last axis (a scalar is one)."""
    n = int(math.prod(shape))
    c = shape[-1] if shape else 1
    return (n // c if c else 0), c


def _read_escapes(coder: AnsReader, n: int) -> np.ndarray:
    """The ``n`` zigzag varints (uint64) of a context-mode payload's escaped values, read as
    bytes from the rANS stack after its rows (at most :data:`_VARINT_MAX` bytes each)."""
    if n == 0:
        return np.zeros(0, np.uint64)
    got = np.zeros(0, np.uint8)
    done = 0
    while done < n:  # each unfinished varint needs at least one more byte
        require(not coder.is_empty() and got.size + n - done <= _VARINT_MAX * n,
                "tokenwise: rANS data ends early (escaped values)")
        got = np.concatenate([got, coder.read_model(n - done, _byte_model()).astype(np.uint8)])
        done = int(np.count_nonzero(got < 0x80))
    rd = Reader(memoryview(got.tobytes()))
    out = read_varints(rd, n)
    rd.expect_end()
    return out


def _zigzag(q: np.ndarray) -> np.ndarray:
    return np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.int64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    u = u.astype(np.int64)
    return np.where(u & 1, -((u + 1) >> 1), u >> 1)


@register_codec("tokenwise", codec_id=9)
class TokenwiseCodec(SessionContextCodec):
    """Per-channel static entropy model from a session context; tiny per-token streams."""

    params_spec = (
        Param("context", int, 0, low=0, high=(1 << 20) - 1,
              doc="id of a registered session context (0: self-contained rows)"),
        Param("level", int, 0, low=-64, high=64,
              doc="step = 2**(level/8) x the context's (or the row's) median |x - mu|"),
    )
    quality_param = "level"
    quality_grid = (16, 12, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0, -2, -4, -8)
    context_param = "context"
    context_registry = CONTEXTS

    context: TokenwiseContext | None  # None: self-contained rows

    @property
    def uses_previous_row(self) -> bool:  # type: ignore[override]
        return self.context is not None and self.context.temporal is not None

    @property
    def step(self) -> float:
        """The step factor ``2**(level / 8)``."""
        return float(2.0 ** (self.params["level"] / 8.0))

    # -- self-contained rows (:mod:`._tokenwise_plain`) ---------------------------------------
    def _row_steps(self, x2: np.ndarray) -> np.ndarray:
        """Each row's float32 step (from its median and largest magnitude)."""
        return plain.row_steps(x2, self.step)

    # -- context mode ------------------------------------------------------------------------
    def _steps(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Rows' scale codes, level offsets (None without allocation) and steps."""
        ctx = self.context
        assert ctx is not None
        codes = ctx.token_codes(x2)
        offsets = None if ctx.alloc is None else ctx.alloc.offsets(x2, codes)
        return codes, offsets, ctx.steps(ctx.row_steps(self.params["level"], offsets), codes)

    def _quantize(self, x2: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Rows' scale codes, level offsets (None without allocation), steps and symbols."""
        codes, offsets, d = self._steps(x2)
        ctx = self.context
        assert ctx is not None
        with np.errstate(all="ignore"):
            q = ctx.quantize(x2, d)
        if not np.all(np.abs(q) <= Q_MAX):
            raise ValueError("tokenwise: values too large for this context and level")
        return codes, offsets, d, q.astype(np.int64)

    def _quantized(self, x2: np.ndarray) -> tuple:
        """Rows' scale codes, level offsets (or None), steps and what codes them: the
        trellis's symbols, models and escaped indices, or the scalar symbols."""
        ctx = self.context
        assert ctx is not None
        if not ctx.trellis:
            return self._quantize(x2)
        codes, offsets, d = self._steps(x2)
        lvs = self.params["level"] + (0 if offsets is None else offsets)
        keys = [_key(ctx, int(lv), int(code)) for lv, code in
                zip(np.broadcast_to(lvs, codes.shape).tolist(), codes.tolist(), strict=True)]
        return codes, offsets, d, trellis_mod.encode_rows(ctx, x2, d, keys, Q_MAX)

    def _temporal_rows(self, x2: np.ndarray) -> tuple:
        """:meth:`_quantized` of each row's residual against its guess from the previous
        decoded row (:mod:`._tokenwise_temporal`), as the decoder will have them."""
        ctx = self.context
        assert ctx is not None and ctx.temporal is not None
        return temporal_mod.code_rows(ctx.temporal, x2, self._quantized, self._decoded,
                                      ctx.trellis)

    def _decoded(self, d: np.ndarray, coded) -> np.ndarray:
        """The rows the decoder makes of :meth:`_quantized`'s steps and coding."""
        ctx = self.context
        assert ctx is not None
        if not ctx.trellis:
            return ctx.reconstruct(coded, d)
        return trellis_mod.decode_rows(ctx, coded[0], _zigzag(coded[2]), d, Q_MAX)

    def _encode_context(self, x2: np.ndarray) -> bytes:
        ctx = self.context
        assert ctx is not None
        if not np.all(np.isfinite(x2)):
            raise ValueError("tokenwise: input contains NaN or inf")
        code_probs, level = ctx.code_probs, self.params["level"]
        codes, offsets, _, coded = (self._quantized(x2) if ctx.temporal is None
                                    else self._temporal_rows(x2))
        escapes: list[np.ndarray] = []
        if ctx.trellis:
            sym, models, escaped = coded
            if escaped.size:
                escapes.append(escaped)
        else:
            q = coded
        writer = AnsWriter()
        alloc_probs = None if ctx.alloc is None else ctx.alloc.probs
        for row, code in enumerate(codes):
            writer.add_rows(np.array([code], np.int32), code_probs)
            lv = level
            if offsets is not None:
                writer.add_rows(np.array([offsets[row] + ctx.alloc.max_offset], np.int32),
                                alloc_probs)
                lv += int(offsets[row])
            if ctx.trellis:
                writer.add_rows(sym[row], trellis_mod.row_model(*models[row]))
                continue
            for t in ctx.tables_at(ctx.table_key(lv, int(code))):
                qs = q[row, t.channels]
                esc = np.abs(qs) > t.k
                sym = np.where(esc, 2 * t.k + 1, qs + t.k).astype(np.int32)
                writer.add_rows(sym, t.probs)
                if esc.any():
                    escapes.append(qs[esc])
        if escapes:  # after every row: the decoder then knows how many there are
            tail = put_varints(_zigzag(np.concatenate(escapes)))
            writer.add_model(np.frombuffer(tail, np.uint8).astype(np.int32), _byte_model())
        # the last word is the state's high word (never 0): its zero high bytes go unsent
        out = writer.finish().rstrip(b"\0")
        if x2.shape[0] > ROWS_PER_BYTE * len(out):
            raise ValueError("tokenwise: rows too cheap for this context (degenerate calibration)")
        work = stream_work(ctx, level, codes, offsets)
        if work > work_budget(len(out)):
            raise ValueError(f"tokenwise: these rows would cost a decoder {work} units of work, "
                             f"more than {len(out)} bytes allow ({work_budget(len(out))}): "
                             f"send fewer rows per stream (their scales span too many codes)")
        return bytes(out)

    def _decode_context(self, payload: memoryview, r: int, c: int) -> np.ndarray:
        ctx = self.context
        assert ctx is not None
        require(c == ctx.channels, f"tokenwise: {c} channels, the context has {ctx.channels}")
        require(r <= ROWS_PER_BYTE * len(payload), "tokenwise: more rows than the payload holds")
        require(len(payload) > 0 and payload[-1] != 0, "tokenwise: bad payload end")
        coder = AnsReader(bytes(payload) + bytes(-len(payload) % 4), "tokenwise")
        q = np.zeros((r, c), np.int64)
        esc_at: list[tuple[int, np.ndarray, int]] = []
        codes = np.zeros(r, np.int64)
        alloc, level = ctx.alloc, self.params["level"]
        offsets = None if alloc is None else np.zeros(r, np.int64)
        code_probs = ctx.code_probs
        alloc_probs = None if alloc is None else alloc.probs
        budget, work = work_budget(len(payload)), ctx.reconstruction_work(r)
        require(work <= budget, f"tokenwise: {r} rows cost more decoding work than "
                f"{len(payload)} bytes allow")
        named: dict[tuple, tuple[list, int]] = {}  # table key -> its tables and cells, here
        for row in range(r):
            require(not coder.is_empty(), "tokenwise: rANS data ends early")
            codes[row] = code = int(coder.read_rows(code_probs)[0])
            lv = level
            if alloc is not None:
                offsets[row] = int(coder.read_rows(alloc_probs)[0]) - alloc.max_offset
                lv += int(offsets[row])
            key = _key(ctx, lv, code)
            tables, cells = named.get(key) or (None, ctx.cells_at(key))
            work += cells if tables else cells + BUILD_CELL * cells + BUILD_CHANNEL * c
            require(work <= budget, f"tokenwise: the stream costs more decoding work than "
                    f"its {len(payload)} bytes allow (row {row}, {len(named)} table sets)")
            if tables is None:  # held for this stream even if the context's cache drops it
                tables = ctx.tables_at(key)
                named[key] = tables, cells
            if ctx.trellis:  # the symbols as read; decode_rows makes them values
                q[row] = coder.read_rows_trellis(tables[0].probs, tables[1].probs,
                                                 trellis_mod.KT)
                continue
            for t in tables:
                sym = np.asarray(coder.read_rows(t.probs), np.int64)
                esc = sym == 2 * t.k + 1
                q[row, t.channels] = sym - t.k
                if esc.any():
                    esc_at.append((row, t.channels[esc], t.k))
        if ctx.trellis:
            escaped = _read_escapes(coder, int(np.count_nonzero(q > 2 * trellis_mod.KT)))
            require(coder.is_empty(), "tokenwise: trailing rANS data")
            d = ctx.steps(ctx.row_steps(level, offsets), codes)
            out = trellis_mod.decode_rows(ctx, q, escaped, d, Q_MAX)
            out = temporal_mod.add_guesses(ctx.temporal, out)
            require(bool(np.all(np.isfinite(out))), "tokenwise: decoded values not finite")
            return out
        n_esc = sum(ch.size for _, ch, _ in esc_at)
        vals = _unzigzag(_read_escapes(coder, n_esc))
        require(coder.is_empty(), "tokenwise: trailing rANS data")
        if n_esc:
            i = 0
            for row, ch, k in esc_at:
                v = vals[i : i + ch.size]
                i += ch.size
                require(bool(np.all((np.abs(v) > k) & (np.abs(v) <= Q_MAX))),
                        "tokenwise: bad escaped value")
                q[row, ch] = v
        d = ctx.steps(ctx.row_steps(level, offsets), codes)
        out = temporal_mod.add_guesses(ctx.temporal, ctx.reconstruct(q, d))
        require(bool(np.all(np.isfinite(out))), "tokenwise: decoded values not finite")
        return out

    # -- Codec -------------------------------------------------------------------------------
    def encode_array(self, x: np.ndarray) -> bytes:
        r, c = _rows(x.shape)
        if r * c == 0:
            return b""
        x2 = x.reshape(r, c)
        if self.context is None:  # checks finiteness
            return plain.encode(x2, self.step)
        if c != self.context.channels:
            raise ValueError(f"tokenwise: last dim {c}, the context has {self.context.channels}")
        return self._encode_context(x2)

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        r, c = _rows(shape)
        if r * c == 0:
            require(len(payload) == 0, "tokenwise: payload for an empty tensor")
            return np.zeros(shape, np.float32)
        if self.context is None:
            out = plain.decode(payload, r, c)
        else:
            out = self._decode_context(payload, r, c)
        return out.reshape(shape)

    def error_bound(self, x: np.ndarray) -> float:
        r, c = _rows(x.shape)
        if r * c == 0:
            return 0.0
        x2 = np.asarray(x, np.float32).reshape(r, c)
        top = float(np.abs(x2).max())
        if self.context is None:
            return float(self._row_steps(x2).max()) * 0.5 * (1 + 1e-5) + top * 2.0**-22
        d = (self._steps(x2) if self.context.temporal is None else self._temporal_rows(x2))[2]
        if self.context.trellis:  # a path's point is within 2 steps of its input
            bound = d.astype(np.float64) * trellis_mod.MAX_ERROR
        else:
            bound = d.astype(np.float64) * (0.5 + float(self.context.delta.max()))
        if self.context.shaping is not None:  # each channel also carries the feedback it got
            bound = shaped_error_bound(bound, self.context.shaping)
        return float(bound.max()) * (1 + 1e-5) + top * 2.0**-22 + 1e-30
