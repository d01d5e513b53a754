"""Session context of the ``tokenwise`` codec: static per-channel statistics, sent once.

A :class:`TokenwiseContext` is what calibration learns from a few hundred hidden states of
one model at one cut: per channel a centre ``mu`` (float16), a step weight ``w`` (log-coded
byte), a reconstruction offset ``delta`` (byte / 256 of a step) and the distribution of the
token-normalised value ``z = (x - mu) / (S * w * f_t)`` as ``M`` quantile knots (float16) at
shared cumulative probabilities; globally the reference scale ``S``, the exponent ``alpha``
with which a token's scale ``f_t`` moves its quantization step, and the dead-zone ``theta``.

It is its own self-describing, CRC-protected bitstream (:meth:`TokenwiseContext.to_bytes`;
layout: ``docs/bitstream.md``, section "tokenwise", "Session context"), sent once per session;
per-token bitstreams name it by a 20-bit id (from a SHA-256). A stream decodes with the context
in scope under its id (:func:`splitcomp.codecs.contexts.context_scope`: a server's per-session
contexts), else the one registered in this process (:func:`register_context`,
:func:`load_context_file`); a stream naming neither is refused with
:class:`~splitcomp.codecs.errors.BitstreamError`.

Entropy tables (:meth:`TokenwiseContext.tables_at`) are derived, never sent: for a step ``c``
(in units of ``S * w``) and a token scale code, the probability of each symbol is the mass of
its cell under the channel's piecewise-linear CDF through the knots (plus a small floor);
channels are grouped by the half-width ``K`` of their alphabet (a power of two, 2 .. 256), and
symbol ``2K + 1`` of a group is the escape (the value follows as a varint). A table set costs
``8 * sum(2K + 2)`` bytes (16 MB for 4096 channels at ``K = 256``) and time to match, and any
row of a stream may name another scale code: :meth:`TokenwiseContext.cells_at` gives its
size before it is built (the codec bounds each stream's work with it) and the per-context cache
keeps at most :data:`TABLE_CACHE` sets and :data:`TABLE_CACHE_BYTES` bytes, least recently
used evicted first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import _tokenwise_shaping as shaping_mod
from . import _tokenwise_trellis as trellis_mod
from ._tokenwise_alloc import MAX_OFFSET_LIMIT, Allocation
from ._tokenwise_predict import (
    closed_loop,
    cross_fitted_residuals,
    quantize_closed_loop,
    reconstruction,
)
from ._tokenwise_temporal import Temporal
from .bytes_io import put_varint
from .contexts import ContextRegistry, seal, unseal
from .contexts import context_scope as context_scope  # its old home; splitcomp.codecs has it
from .errors import BitstreamError, require

MAGIC = b"SCTX"
#: version 1: no predictor; 2: a predictor across channels follows the knots; 3: flags (bit 0:
#: a predictor, bit 1: trellis coding, :mod:`._tokenwise_trellis`, bit 2: previous-token
#: prediction, :mod:`._tokenwise_temporal`, bit 3: its low-rank term, whose rank follows the
#: allocation bound) and per-token allocation
VERSION, VERSION_PREDICT, VERSION_ALLOC = 1, 2, 3
#: most channels a context with a predictor may have (its bytes grow as C^2, and the decoder
#: inverts a C x C matrix once: ~1 s at 4096)
PREDICT_MAX_CHANNELS = 4096
#: cumulative probabilities of the default knots: fine in the tails and near the median
P_GRID = np.array(
    [0.0, 1e-4, 5e-4, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3,
     0.35, 0.4, 0.45, 0.475, 0.5], np.float64)
P_GRID = np.concatenate([P_GRID, 1.0 - P_GRID[-2::-1]])
#: bounds of a token's scale code (7 bits); 64 is the reference scale
CODE_MAX, CODE_MID = 127, 64
#: largest alphabet half-width; symbols beyond are escapes
K_MAX = 256
#: probability floor of every symbol (relative), so no symbol is ever impossible
FLOOR = 1e-6
_MAX_CHANNELS = 1 << 16
#: table sets kept per context (one per level and token scale code in use), and their bytes
TABLE_CACHE = 48
TABLE_CACHE_BYTES = 64 << 20


def token_factor(code: np.ndarray | int) -> np.ndarray:
    """The token scale ``f_t = 2**((code - 64) / 8)`` (float64) of a scale code."""
    return np.exp2((np.asarray(code, np.float64) - CODE_MID) / 8.0)


def _w_from_code(code: np.ndarray) -> np.ndarray:
    return np.exp2((code.astype(np.float64) - 128.0) / 16.0).astype(np.float32)


@dataclass(frozen=True)
class Table:
    """One group of channels sharing an alphabet half-width ``k``: probabilities (n, 2k + 2)."""

    channels: np.ndarray
    k: int
    probs: np.ndarray


@dataclass(eq=False)
class TokenwiseContext:
    """Per-channel calibration statistics (see the module docstring). Build with
    :func:`calibrate` or :meth:`from_bytes`; the fields are what the bytes say, already
    rounded to their wire precision."""

    scale: float
    alpha: float
    theta: float
    p_grid: np.ndarray
    mu: np.ndarray
    w_code: np.ndarray
    delta: np.ndarray
    knots: np.ndarray
    code_counts: np.ndarray
    #: strictly lower-triangular (C, C) prediction coefficients (:mod:`._tokenwise_predict`),
    #: or None: channels coded as they are
    pred: np.ndarray | None = None
    #: the encoder's Fisher noise-shaping feedback (C, C), strictly lower triangular
    #: (:mod:`._tokenwise_shaping`), or None. Not part of the wire bytes or the id (the decoder
    #: does not need it); a context file carries it (:meth:`file_bytes`)
    shaping: np.ndarray | None = None
    #: per-token step allocation (:mod:`._tokenwise_alloc`), or None: every row at the level
    alloc: Allocation | None = None
    #: rows coded by trellis quantization (:mod:`._tokenwise_trellis`; a version 3 context)
    trellis: bool = False
    #: previous-token prediction (:mod:`._tokenwise_temporal`), or None
    temporal: Temporal | None = None
    _recon: np.ndarray | None = field(default=None, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)  #: table key -> tables, LRU
    _table_bytes: int = field(default=0, repr=False)
    _cells: dict = field(default_factory=dict, repr=False)  #: table key -> table cells

    @property
    def channels(self) -> int:
        return int(self.mu.size)

    @property
    def w(self) -> np.ndarray:
        return _w_from_code(self.w_code)

    # -- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        out = bytearray(MAGIC)
        if self.alloc is None and not self.trellis and self.temporal is None:
            out.append(VERSION if self.pred is None else VERSION_PREDICT)
        else:  # A = 0: no allocation (a trellis or temporal context only)
            rank = 0 if self.temporal is None else self.temporal.rank
            out += bytes([VERSION_ALLOC, int(self.pred is not None) | 2 * int(self.trellis)
                          | 4 * int(self.temporal is not None) | 8 * int(rank > 0),
                          0 if self.alloc is None else self.alloc.max_offset])
            if rank:
                out.append(rank)
        put_varint(out, self.channels)
        put_varint(out, int(self.p_grid.size))
        out += struct.pack("<f", self.scale)
        out.append(round(self.alpha * 8))
        out.append(round(self.theta * 256))
        out += np.rint(self.p_grid * 65535).astype("<u2").tobytes()
        out += self.code_counts.astype("<u2").tobytes()
        out += self.mu.astype("<f2").tobytes()
        out += self.w_code.astype(np.uint8).tobytes()
        out += np.rint(self.delta * 256).astype(np.uint8).tobytes()
        out += self.knots.astype("<f2").tobytes()
        if self.pred is not None:
            out += self.pred[np.tril_indices(self.channels, -1)].astype("<f2").tobytes()
        if self.alloc is not None:
            out += self.alloc.tail_bytes()
        if self.temporal is not None:
            out += self.temporal.tail_bytes()
        return seal(out)

    def file_bytes(self) -> bytes:
        """What a context file holds: :meth:`to_bytes`, then the shaping section if any."""
        data = self.to_bytes()
        return data if self.shaping is None else data + shaping_mod.section_bytes(self.shaping)

    @classmethod
    def from_file_bytes(cls, data: bytes | bytearray | memoryview) -> TokenwiseContext:
        """Parse a context file (:meth:`file_bytes`); BitstreamError if malformed."""
        try:
            head, section = shaping_mod.split_file(data)
            if section is None:
                return cls.from_bytes(head)
            ctx = cls.from_bytes(head)
        except BitstreamError:  # a plain context whose CRC happens to end in the trailer
            return cls.from_bytes(data)
        ctx.shaping = shaping_mod.section_from_bytes(section, ctx.channels)
        return ctx

    @property
    def context_id(self) -> int:
        """20-bit id (never 0) of this context: what a per-token bitstream carries."""
        return context_id(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> TokenwiseContext:
        """Parse and validate context bytes; anything malformed raises BitstreamError."""
        view, r = unseal(data, MAGIC, (VERSION, VERSION_PREDICT, VERSION_ALLOC),
                         len(MAGIC) + 1 + 4, "tokenwise context")
        version, max_offset, flags, rank = view[len(MAGIC)], 0, 0, 0
        predicted = version == VERSION_PREDICT
        if version == VERSION_ALLOC:
            flags, max_offset = r.u8(), r.u8()
            require(flags <= 15 and (1 <= max_offset <= MAX_OFFSET_LIMIT
                                     or (flags & 6 and max_offset == 0)),
                    "tokenwise context: bad flags or allocation bound")
            rank = r.u8() if flags & 8 else 0
            require(not flags & 8 or (flags & 4 and rank >= 1),
                    "tokenwise context: bad temporal rank")
            predicted = bool(flags & 1)
        c, m = r.varint(), r.varint()
        require(1 <= c <= _MAX_CHANNELS and 3 <= m <= 255, "tokenwise context: bad sizes")
        require(not predicted or c <= PREDICT_MAX_CHANNELS,
                f"tokenwise context: a predictor over more than {PREDICT_MAX_CHANNELS} channels")
        size = 6 + 2 * m + 256 + 4 * c + 2 * c * m + (c * (c - 1) if predicted else 0)
        if max_offset:
            size += Allocation.tail_size(c, max_offset)
        if flags & 4:
            size += Temporal.tail_size(c, rank)
        require(r.remaining() == size, "tokenwise context: bad length")
        (scale,) = r.unpack("<f")
        alpha, theta = r.u8(), r.u8()
        require(np.isfinite(scale) and scale > 0, "tokenwise context: bad scale")
        require(alpha <= 8 and theta < 128, "tokenwise context: bad alpha or theta")
        p16 = np.frombuffer(r.take(2 * m), "<u2").astype(np.int64)
        require(p16[0] == 0 and p16[-1] == 65535 and bool(np.all(np.diff(p16) > 0)),
                "tokenwise context: bad knot probabilities")
        counts = np.frombuffer(r.take(256), "<u2").astype(np.int64)
        mu = np.frombuffer(r.take(2 * c), "<f2").astype(np.float32)
        w_code = np.frombuffer(r.take(c), np.uint8).copy()
        d8 = np.frombuffer(r.take(c), np.uint8)
        require(bool(np.all(d8 < 128)), "tokenwise context: bad offsets")
        knots = np.frombuffer(r.take(2 * c * m), "<f2").astype(np.float64).reshape(c, m)
        require(bool(np.all(np.isfinite(mu))) and bool(np.all(np.isfinite(knots))),
                "tokenwise context: not finite")
        require(bool(np.all(np.diff(knots, axis=1) >= 0)), "tokenwise context: knots unsorted")
        pred = None
        if predicted:
            low = np.frombuffer(r.take(c * (c - 1)), "<f2").astype(np.float64)
            require(bool(np.all(np.isfinite(low))), "tokenwise context: predictor not finite")
            pred = np.zeros((c, c))
            pred[np.tril_indices(c, -1)] = low
        alloc = Allocation.read_tail(r, c, max_offset) if max_offset else None
        temporal = Temporal.read_tail(r, c, rank) if flags & 4 else None
        return cls(float(scale), alpha / 8.0, theta / 256.0, p16 / 65535.0, mu, w_code,
                   d8.astype(np.float32) / 256.0, knots, counts, pred, alloc=alloc,
                   trellis=bool(flags & 2), temporal=temporal)

    # -- quantizer -----------------------------------------------------------------------------
    def token_codes(self, x: np.ndarray) -> np.ndarray:
        """Scale code (0 .. 127) of each row of ``x`` (R, C): median |x - mu| against S."""
        s = np.median(np.abs(x - self.mu), axis=1).astype(np.float64)
        with np.errstate(divide="ignore"):
            code = np.rint(8.0 * np.log2(np.maximum(s, 1e-30) / self.scale)) + CODE_MID
        return np.clip(code, 0, CODE_MAX).astype(np.int64)

    def steps(self, step: float | np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Quantization steps (R, C) float32 of rows with scale ``codes`` at step ``step`` (a
        float, or one per row (R,): each row's ``2**(level / 8)``)."""
        f = token_factor(codes) ** self.alpha
        if np.ndim(step):
            s = (np.asarray(step, np.float64) * self.scale).astype(np.float32)[:, None]
        else:
            s = np.float32(step * self.scale)
        return (s * f.astype(np.float32)[:, None] * self.w[None, :]).astype(np.float32)

    def row_steps(self, level: int, offsets: np.ndarray | None) -> float | np.ndarray:
        """The step factor ``2**(level / 8)`` of every row, or with allocation ``offsets``
        (R,) each row's ``2**((level + o) / 8)``."""
        if offsets is None:
            return float(2.0 ** (level / 8.0))
        return 2.0 ** ((level + np.asarray(offsets, np.int64)) / 8.0)

    def reconstruction_work(self, rows: int) -> int:
        """Decoding work (the codec's units, ~2 ns) of ``rows`` rows' reconstruction: one
        C x C product a row with a predictor (16 multiply-adds a unit), none without, and the
        previous-token guess's low-rank term, two C x r products a row."""
        rank = 0 if self.temporal is None else self.temporal.rank
        square = 0 if self.pred is None else self.channels
        return rows * self.channels * (square + 2 * rank) // 16

    def quantize(self, x: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Symbols (R, C), float (whole numbers, unbounded: the caller checks their range), of
        rows ``x`` with steps ``d``: of ``(x - mu) / d``, or with a predictor of each
        channel's residual (closed loop, :mod:`._tokenwise_predict`), with shaping of each
        channel's target moved by the errors made before it (:mod:`._tokenwise_shaping`)."""
        if self.shaping is not None:
            return self.quantize_inputs(x, d)[0]
        if self.pred is not None:
            return quantize_closed_loop(x - self.mu, d, self.pred, self.theta, self.delta)
        u = (x - self.mu) / d
        return np.sign(u) * np.floor(np.abs(u) + 0.5 - self.theta)

    def quantize_inputs(self, x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`quantize`'s symbols and what each one rounded, in steps (R, C): what the
        entropy tables model (calibration's knots, :func:`fit_offsets`)."""
        if self.shaping is not None:
            return closed_loop(x - self.mu, d, self.pred, self.shaping, self.theta, self.delta)
        q = self.quantize(x, d)
        if self.pred is None:
            return q, (x - self.mu) / d
        return q, (x - self.reconstruct(q, d)) / d + q  # the decoding error plus the symbol

    def reconstruct(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Decoded rows (R, C) float32 of symbols ``q`` with steps ``d`` (not checked finite:
        the caller does)."""
        qf = q.astype(np.float32)
        return self.from_residuals((qf - np.sign(qf) * self.delta) * d)

    def from_residuals(self, r: np.ndarray) -> np.ndarray:
        """Decoded rows (R, C) float32 of decoded residuals ``r`` (float32): ``mu + r``, or
        with a predictor ``mu + (I - A)^-1 r`` (not checked finite: the caller does)."""
        if self.pred is not None:
            with np.errstate(all="ignore"):  # a hostile predictor overflows: refused later
                if self._recon is None:
                    self._recon = reconstruction(self.pred).astype(np.float32)
                r = r @ self._recon.T
        return (self.mu + r).astype(np.float32)

    @property
    def code_probs(self) -> np.ndarray:
        """Model (1, 128) of a token's scale code: calibration counts plus a floor."""
        p = self.code_counts.astype(np.float64) + 1e-3
        return (p / p.sum())[None, :]

    def table_key(self, level: int, code: int) -> tuple:
        """What the tables of a row at ``level`` (its own, offset included) with scale ``code``
        depend on: the step in units of ``z``, ``2**(level / 8) f_t**(alpha - 1)``. With
        allocation it is computed from its exponent in 64ths (so rows whose level and code
        give the same step share one table set), else as before allocation existed (the same
        tables, so the same bytes, as streams written then)."""
        if self.alloc is None:
            return (float(2.0 ** (level / 8.0)), int(code))
        e = 8 * int(level) + (round(8 * self.alpha) - 8) * (int(code) - CODE_MID)
        return ("e64", e)

    def _width(self, key: tuple) -> float:
        if key[0] == "e64":
            return float(2.0 ** (key[1] / 64.0))
        return key[0] * float(token_factor(key[1])) ** (self.alpha - 1.0)

    def tables_at(self, key: tuple) -> list[Table]:
        """Entropy tables of a :meth:`table_key`, from the cache (least recently used sets
        evicted beyond :data:`TABLE_CACHE` sets or :data:`TABLE_CACHE_BYTES`: a hostile
        sender may cycle through codes)."""
        hit = self._tables.pop(key, None)
        if hit is None:  # ("tcq",) + key: the trellis pair, as two tables over all channels
            hit = self._build_tables(self._width(key)) if key[0] != "tcq" else [
                Table(np.arange(self.channels), trellis_mod.KT, p) for p in
                trellis_mod.build_tables(self.knots, self.p_grid, self._width(key[1:]))]
            self._table_bytes += _nbytes(hit)
        self._tables[key] = hit  # most recently used last
        while len(self._tables) > 1 and (len(self._tables) > TABLE_CACHE
                                         or self._table_bytes > TABLE_CACHE_BYTES):
            self._table_bytes -= _nbytes(self._tables.pop(next(iter(self._tables))))
        return hit

    def clear_tables(self) -> None:
        """Forget the cached tables (after the fields they derive from changed)."""
        self._tables.clear()
        self._cells.clear()
        self._table_bytes = 0

    def cells_at(self, key: tuple) -> int:
        """Probabilities in the table set of a :meth:`table_key` (``sum(2K + 2)`` over
        channels; 8 bytes each), without building it."""
        if key[0] == "tcq":
            return 2 * self.channels * trellis_mod.N_SYM
        cells = self._cells.get(key)
        if cells is None:
            if len(self._cells) >= 4 * (CODE_MAX + 1):
                self._cells.clear()
            k = self._alphabets(self._width(key))
            cells = self._cells[key] = int(2 * k.sum() + 2 * k.size)
        return cells

    def _alphabets(self, width: float) -> np.ndarray:
        """Each channel's alphabet half-width ``K`` at a step of ``width`` in units of z."""
        reach = np.maximum(np.abs(self.knots[:, 0]), np.abs(self.knots[:, -1])) / width
        k_need = np.ceil(reach - 0.5 - self.theta).clip(0) + 1
        return np.minimum(np.exp2(np.ceil(np.log2(np.maximum(k_need, 2)))), K_MAX).astype(np.int64)

    def _build_tables(self, width: float) -> list[Table]:
        k = self._alphabets(width)
        out = []
        for kg in np.unique(k):
            ch = np.flatnonzero(k == kg)
            kg = int(kg)
            edges = np.arange(-kg, kg + 2, dtype=np.float64) - 0.5  # -k-0.5 .. k+0.5
            edges = np.where(edges < 0, edges - self.theta, edges + self.theta)
            edges[kg] = -0.5 - self.theta  # the zero cell is [-0.5 - theta, 0.5 + theta)
            z = edges * width
            cdf = np.empty((ch.size, z.size))
            for i, j in enumerate(ch):
                cdf[i] = np.interp(z, self.knots[j], self.p_grid)
            p = np.diff(cdf, axis=1)
            esc = cdf[:, :1] + (1.0 - cdf[:, -1:])
            probs = np.concatenate([p, esc], axis=1).clip(0) + FLOOR
            probs /= probs.sum(axis=1, keepdims=True)
            out.append(Table(ch, kg, probs))
        return out


def _nbytes(tables: list[Table]) -> int:
    return sum(t.probs.nbytes + t.channels.nbytes for t in tables)


#: the contexts this process holds (64 at most, least recently used forgotten first: a server
#: must not grow without limit; files up to 64 MiB, the largest valid context being ~34 MB),
#: under 20-bit ids: the first 20 bits of their SHA-256 (not their CRC32: a CRC over bytes
#: ending in it is a constant)
CONTEXTS: ContextRegistry[TokenwiseContext] = ContextRegistry(
    "tokenwise context", TokenwiseContext, id_bits=20, max_items=64, file_ext="sctx",
    file_bytes=TokenwiseContext.file_bytes, parse_file=TokenwiseContext.from_file_bytes)
_STORE = CONTEXTS._items  # its old name: id -> context, least recently used first

# the functions of old are the registry's methods (see ContextRegistry)
context_id, context_filename, save_context = CONTEXTS.id_of, CONTEXTS.filename, CONTEXTS.save
register_context, load_context_file = CONTEXTS.register, CONTEXTS.load_file
registered_context, find_context, get_context = CONTEXTS.get, CONTEXTS.find, CONTEXTS.require


def calibrate(hidden: np.ndarray, sensitivity: np.ndarray | None = None, alpha: float = 0.0,
              theta: float = 0.0, p_grid: np.ndarray = P_GRID, predict: bool = False,
              fisher: np.ndarray | None = None, shaping_shrink: float = shaping_mod.SHRINK,
              trellis: bool = False) -> TokenwiseContext:
    """A context from calibration hidden states (N, C) (e.g. a few hundred tokens).

    ``sensitivity`` (C,), optional, is the mean squared loss gradient of each channel (a
    diagonal Fisher); steps then shrink where it is large (``w ~ F**-1/2``, within 16x).
    ``alpha`` is how much a token's scale moves its step (0: one static step; 1: a step
    proportional to the token's median |x - mu|); ``theta`` widens the zero cell (dead zone).
    ``predict``: code each channel as its residual against a linear prediction from the
    token's earlier channels (:mod:`._tokenwise_predict`; fitted on the rows whose scale is
    within 4x of the median, so an attention sink's massive activations do not set it), the
    knots then being the residuals' at level 0. ``fisher`` (C, C), optional, is the Fisher
    matrix of the model's output at the cut (mean outer product of loss gradients): the
    encoder then shapes its error to it (:mod:`._tokenwise_shaping`, the matrix shrunk by
    ``shaping_shrink``), the steps follow the shaping's pivots (so ``sensitivity`` is not
    taken with it) and the knots describe the shaped inputs. ``trellis``: rows are coded by
    trellis quantization (:mod:`._tokenwise_trellis`). Rows that are not finite are ignored."""
    x = np.asarray(hidden, np.float32)
    if x.ndim != 2 or x.shape[0] < 2 or not 1 <= x.shape[1] <= _MAX_CHANNELS:
        raise ValueError("calibrate takes hidden states (N >= 2, C)")
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] < 2:
        raise ValueError("calibrate needs at least two finite rows")
    c = x.shape[1]
    mu = np.median(x, axis=0).astype(np.float16).astype(np.float32)
    s = np.median(np.abs(x - mu), axis=1)
    scale = float(np.float32(max(float(np.median(s)), 1e-30)))
    w_code = np.full(c, 128, np.uint8)
    fb = None
    if fisher is not None:
        if sensitivity is not None:
            raise ValueError("calibrate takes sensitivity or fisher, not both")
        if np.shape(fisher) != (c, c):
            raise ValueError(f"fisher must be ({c}, {c}), not {np.shape(fisher)}")
        fb, sensitivity = shaping_mod.fit_shaping(fisher, shaping_shrink)
    if sensitivity is not None:
        f = np.maximum(np.asarray(sensitivity, np.float64).reshape(c), 1e-30)
        rel = f / np.exp(np.mean(np.log(f)))
        w_code = np.clip(np.rint(128 - 8.0 * np.log2(rel)), 64, 192).astype(np.uint8)
    ctx = TokenwiseContext(scale, round(alpha * 8) / 8, round(theta * 256) / 256,
                           np.rint(np.asarray(p_grid) * 65535) / 65535, mu, w_code,
                           np.zeros(c, np.float32), np.zeros((c, len(p_grid))),
                           np.zeros(CODE_MAX + 1, np.int64))
    if predict and c > PREDICT_MAX_CHANNELS:
        raise ValueError(f"a predictor serves at most {PREDICT_MAX_CHANNELS} channels, not {c}")
    codes = ctx.token_codes(x)
    counts = np.bincount(codes, minlength=CODE_MAX + 1)
    ctx.code_counts = np.minimum(np.ceil(counts * min(1.0, 65535 / counts.max())), 65535)
    units = np.float32(scale) * token_factor(codes).astype(np.float32)[:, None] * ctx.w[None, :]
    ctx.shaping = fb
    if predict:
        z = cross_fitted_residuals(ctx, x, codes) / units
    elif fb is not None:
        d = ctx.steps(1.0, codes)
        z = ctx.quantize_inputs(x, d)[1] * d / units
    else:
        z = (x - mu) / units
    knots = np.quantile(z.astype(np.float64), ctx.p_grid, axis=0).T
    knots = np.clip(knots, -60000, 60000).astype(np.float16).astype(np.float64)
    ctx.knots = np.maximum.accumulate(knots, axis=1)
    ctx.trellis = bool(trellis)
    return ctx


def fit_offsets(ctx: TokenwiseContext, hidden: np.ndarray, step: float) -> None:
    """Set each channel's reconstruction offset to the mean distance, in steps, of the
    calibration values from their non-zero levels toward zero (0 .. 127/256)."""
    x = np.asarray(hidden, np.float32)
    ctx.delta = np.zeros(ctx.channels, np.float32)  # with a predictor, the residuals see it
    d = ctx.steps(step, ctx.token_codes(x))
    q, u = ctx.quantize_inputs(x, d)
    nz = q != 0
    gap = np.where(nz, np.abs(q) - np.abs(u), 0.0).sum(0) / np.maximum(nz.sum(0), 1)
    ctx.delta = (np.clip(np.rint(gap * 256), 0, 127) / 256).astype(np.float32)
    ctx.clear_tables()
