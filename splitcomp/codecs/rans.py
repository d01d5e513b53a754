"""Uniform quantization + rANS entropy coding, with blocking and zero coding chosen by a cost model.

Quantizer. One step ``delta`` per tensor: ``2**bits - 1`` steps span the range ``[lo, hi]``,
where ``lo <= 0 <= hi`` leave at most a fraction ``1 - clip`` of the values below ``lo`` and
at most that fraction above ``hi`` (``clip=1``: min/max; the range comes from a 4096-bucket
histogram of the float bit patterns, no sort). Symbols are ``q = rint(x / delta)``, unbounded:
values outside the range are not clipped but become rarer, larger symbols, so every element
keeps ``|x_hat - x| <= delta / 2`` (plus float32 rounding, see :meth:`RansCodec.error_bound`)
and 0 decodes to exactly 0 (ReLU zeros stay zeros). ``clip < 1`` keeps a few outliers (LLM
hidden states have channels 100x larger than the rest) from making the step useless for every
other value. ``|q|`` is capped at 2**24 by growing the step for absurd dynamic ranges.

Entropy coding. Symbols go through :mod:`splitcomp.codecs.entropy`: with ``coder="ans"``
rANS with frequency tables sent in the payload; with ``coder="pco"`` pcodec streams (model
inside each stream, faster to decode, a little larger, not blocked; figures:
``docs/results/codecs.md``, section "rans"). Two choices are made per tensor by a cost model:

* zero coding: ``dense`` (every symbol coded, zero included) or ``runs`` (the zero/non-zero
  mask as alternating run lengths, one stream for zero runs and one for non-zero runs, then
  only the non-zero symbols). Runs win when zeros cluster;
* blocking (``ans`` only): one frequency row per tensor, or per block of
  ``B = prod(shape[j:])`` elements (per sample, per channel, per row of an NCHW map; per token
  of a (batch, tokens, width) state), all rows over one shared alphabet.

Cost model, per candidate (mode, B), in bits::

    rows * m * w                  count codes of the value table (m symbols, w bits each)
  + ~40                           table header and alphabet
  + sum_b (N_b log2 N_b - sum_s c_bs log2 c_bs)    each block's symbols at its entropy
  + [runs] the same for the two run-length streams, minus the zero symbol's share above

All terms come from a (blocks x symbols) count matrix made by one ``bincount`` (coarser
blockings sum its rows; ``sum c log c`` goes through a histogram of the counts). Blockings
whose codes alone exceed the best estimate are skipped; runs are skipped when the zero mask
carries under 64 bits of information (``n * h2(p0)``), the most they could save. The cheapest
candidate is coded and recorded in the payload. The table coder then also picks its bin
width and count precision by cost (see :class:`~splitcomp.codecs.entropy.FreqTable`).

Payload layout: ``docs/bitstream.md``, section "rans". An empty tensor has an empty payload.
Non-finite input raises ``ValueError`` at encode time.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from . import entropy as ent
from .base import Codec, Param
from .bytes_io import Reader, put_varint, unzigzag, zigzag
from .entropy.tables import _log2_table, choose_kernels, rows_kernels
from .errors import DecodeLimits, require
from .registry import register_codec

MODE_DENSE, MODE_RUNS = 0, 1
#: largest |q|; beyond it the step grows (only for ranges of more than 2**24 steps)
MAX_Q = 1 << 24
#: bounds on the blocking (elements per block, blocks per tensor)
MIN_BLOCK, MAX_ROWS = 16, 4096
_MIN_STEP = 1e-30
_F32_MAX = float(np.finfo(np.float32).max)


def _range(x: np.ndarray, lo: float, hi: float, clip: float) -> tuple[float, float]:
    """[lo, hi] with at most floor(n * (1 - clip)) values beyond each end, from a histogram.

    Buckets are the top 12 bits of the float32 pattern (sign, exponent, 3 mantissa bits), so
    each end is at most 12.5 % beyond the exact quantile; no sort or partition.
    """
    tail = int(x.size * (1.0 - clip))
    if tail == 0:
        return lo, hi
    kern = choose_kernels()
    if kern is not None:  # the same histogram and edges, compiled
        return kern.clip_range(x.reshape(-1), lo, hi, tail)
    counts = np.bincount(x.reshape(-1).view(np.uint32) >> 20, minlength=4096)

    def edge(side: np.ndarray, extreme: float) -> float:
        from_top = np.cumsum(side[::-1])  # values in the top i + 1 buckets
        i = int(np.searchsorted(from_top, tail, side="right"))  # buckets wholly in the tail
        if i == 0 or i >= side.size or from_top[i - 1] == 0:
            return extreme  # nothing to leave out: keep the exact extreme
        bound = float(np.array([(side.size - i) << 20], np.uint32).view(np.float32)[0])
        return min(extreme, bound)

    hi_c = edge(counts[:2048], hi)
    lo_c = -edge(counts[2048:], -lo)
    if hi_c - lo_c <= 0:
        return lo, hi
    return lo_c, hi_c


def _step(x: np.ndarray, bits: int, clip: float) -> tuple[np.float32, float, float]:
    """(delta, min, max) for ``x``; raises ValueError for NaN/inf input."""
    xmin, xmax = float(x.min()), float(x.max())
    if not (math.isfinite(xmin) and math.isfinite(xmax)):
        raise ValueError("rans: input contains NaN or inf")
    lo, hi = min(xmin, 0.0), max(xmax, 0.0)
    if clip < 1.0:
        lo, hi = _range(x, lo, hi, clip)
    delta = (hi - lo) / ((1 << bits) - 1)
    amax = max(-xmin, xmax)
    delta = max(delta, amax / MAX_Q, _MIN_STEP)
    d32 = np.float32(delta)
    while float(d32) * MAX_Q < amax:  # float32 rounding must not push |q| past MAX_Q
        d32 = np.nextafter(d32, np.float32(np.inf))
    return d32, xmin, xmax


def _block_sizes(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Candidate (j, B) blockings: B = prod(shape[j:]), distinct, from one block to the finest.

    Blocks hold at least ``MIN_BLOCK`` elements and there are at most ``MAX_ROWS`` of them:
    each costs a model and a coder call, and the decoder must stay fast on hostile input.
    """
    n = math.prod(shape)
    out = [(0, n)]
    for j in range(1, min(len(shape), 16)):
        b = math.prod(shape[j:])
        if MIN_BLOCK <= b < out[-1][1] and n // b <= MAX_ROWS:
            out.append((j, b))
    return out


def _cap(n: int, rows: int) -> int:
    """Symbols a table row may code: the models of all rows stay within 4n + 2**16 entries
    (the blockings the cost model allows fit: rows * m <= 4n + 4096)."""
    return min(ent.MAX_ALPHABET, (4 * n + (1 << 16)) // rows)


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v * np.log2(np.maximum(v, 1.0))


def _sum_xlogx(mat: np.ndarray, lg: np.ndarray | None = None, mult=None) -> float:
    """sum of c * log2(c) over all cells of a count matrix, via a histogram of the counts
    (``mult``, when the caller has it); ``lg`` (``tables._log2_table``, covering the counts)
    saves computing the logs, not one bit of the result."""
    if mult is None:
        mult = np.bincount(mat.reshape(-1))
    if lg is None:
        return float(mult @ _xlogx(np.arange(mult.size)))
    return float(mult @ (np.arange(mult.size, dtype=np.float64) * lg[: mult.size]))


def _side_bits(rows: int, m: int, top: int) -> float:
    """Table side information: rows * m codes of w bits (k = 2) plus ~4 bytes of header."""
    return 40.0 + rows * m * max(1, (round(2 * math.log2(max(top, 1))) + 1).bit_length())


def _run_tables(lengths: np.ndarray, first: bool) -> tuple[float, list]:
    """Estimated bits of the two run-length streams and their (symbols, alphabet, counts)."""
    bits = 16.0
    parts = []
    for part in (lengths[(1 if first else 0) :: 2], lengths[(0 if first else 1) :: 2]):
        if part.size:
            syms = part - 1
            alphabet, counts = ent.histogram(syms)
            bits += ent.estimate_table_bits(counts, alphabet)
            parts.append((syms, alphabet, counts))
    return bits, parts


def _encode_compiled(kern, n: int, r, alphabet, mat, zero_rank: int, parts: list):
    """The tables and rANS words of :meth:`RansCodec.encode_array` (``coder="ans"``) by one
    kernel, the same bytes; None leaves the case (and any error) to the reference."""
    lg = _log2_table(n + 1)
    if lg is None:
        return None
    none = np.zeros(0, np.int64)
    args = [tuple(np.ascontiguousarray(v, np.int64) for v in part) for part in parts]
    args += [(none, none, none)] * (2 - len(args))
    status, data = kern.encode_rans(
        np.ascontiguousarray(r, np.int32), np.ascontiguousarray(alphabet, np.int64),
        np.ascontiguousarray(mat, np.int64), zero_rank, len(parts), *args[0], *args[1],
        _cap(n, 1), _cap(n, mat.shape[0]), lg)
    return data.tobytes() if status == 0 else None


@register_codec("rans", codec_id=7)
class RansCodec(Codec):
    """Per-tensor uniform quantization, rANS-coded with cost-model-chosen blocking (module doc)."""

    reusable = True

    params_spec = (
        Param("bits", int, 8, low=2, high=16, doc="2**bits - 1 steps span the clipped range"),
        Param(
            "clip",
            float,
            0.99,
            low=0.5,
            high=1.0,
            doc="at most 1 - clip of the values lie beyond each end of the range that sets "
            "the step (they are still coded exactly to half a step, never clipped)",
        ),
        Param(
            "coder",
            str,
            "ans",
            choices=("ans", "pco"),
            doc="ans: constriction rANS with blocked tables (smallest); pco: pcodec streams, "
            "one per tensor (a few % larger, ~4x faster decode)",
        ),
    )
    quality_param = "bits"
    quality_grid = (2, 3, 4, 5, 6, 8)

    # -- encoder -------------------------------------------------------------------------
    def _quantize(self, x: np.ndarray, clip: float | None = None):
        """Step, symbols u = q - q_min >= 0 and their histogram, as the encoder makes them.

        If a clipped range leaves more than ``MAX_ALPHABET`` distinct symbols (only with
        millions of heavy-tailed values), the min/max range is used instead.
        """
        clip = self.params["clip"] if clip is None else clip
        delta, xmin, xmax = _step(x, self.params["bits"], clip)
        inv = np.float32(1.0) / delta
        q_min = int(np.rint(np.float32(xmin) * inv))
        q_max = int(np.rint(np.float32(xmax) * inv))
        kern = choose_kernels()
        ok = False
        if kern is not None:  # the same symbols and histogram in one compiled pass
            limit = max(4 * x.size, 1 << 16)
            u, ok, alphabet, counts = kern.quantize(x.reshape(-1), inv, q_min, limit)
        else:
            t = np.multiply(x.reshape(-1), inv)
            np.rint(t, out=t)
            u = t.astype(np.int32)
            if q_min:
                u -= np.int32(q_min)
        if not ok:
            alphabet, counts = ent.histogram(u)
        if alphabet.size > ent.MAX_ALPHABET and clip < 1.0:
            return self._quantize(x, 1.0)
        return delta, xmin, xmax, q_min, q_max, u, alphabet, counts

    def encode_array(self, x: np.ndarray) -> bytes:
        n = x.size
        if n == 0:
            return b""
        x = np.ascontiguousarray(x, np.float32)
        delta, _, _, q_min, q_max, u, alphabet, counts = self._quantize(x)
        zero_rank = -1
        if q_min <= 0 <= q_max:
            i = int(np.searchsorted(alphabet, -q_min))
            zero_rank = i if i < alphabet.size and alphabet[i] == -q_min else -1
        r = ent.ranks(u, alphabet)
        pco = self.params["coder"] == "pco"
        shape = (n,) if pco else x.shape  # pcodec streams are not blocked
        mode, j, block, mat, runs = self._choose(shape, r, alphabet, counts, zero_rank)

        out = bytearray()
        first, lengths, run_parts = runs
        out.append(mode | (int(first and mode == MODE_RUNS) << 1) | (int(pco) << 2) | (j << 4))
        out += struct.pack("<f", float(delta))
        put_varint(out, zigzag(q_min))
        if mode == MODE_RUNS:
            put_varint(out, lengths.size)
        if pco:
            streams = [syms for syms, _, _ in run_parts] if mode == MODE_RUNS else []
            streams.append(u[r != zero_rank] if mode == MODE_RUNS else u)
            for stream in streams:
                data = ent.pco_encode(stream)
                put_varint(out, len(data))
                out += data
            return bytes(out)
        kern = rows_kernels()
        if kern is not None:  # tables and words in one compiled pass (entropy._rows_kernels)
            body = _encode_compiled(kern, n, r, alphabet, mat, zero_rank,
                                    run_parts if mode == MODE_RUNS else [])
            if body is not None:
                return bytes(out) + body
        writer = ent.AnsWriter()
        if mode == MODE_RUNS:
            for syms, a, c in run_parts:
                table = ent.FreqTable.fit(a, c, _cap(n, 1))
                out += table.to_bytes()
                writer.add(table.ranks(syms), table.freqs(0))
            r = r[r != zero_rank]
            mat = mat.copy()
            mat[:, zero_rank] = 0
        if r.size:
            table = ent.FreqTable.fit(alphabet, mat, _cap(n, mat.shape[0]))
            out += table.to_bytes()
            if table.shift:  # ranks into the present symbols -> ranks into the table's bins
                r = table.ranks(alphabet)[r]
            if mat.shape[0] == 1:
                writer.add(r, table.freqs(0))
            else:
                ends = np.cumsum(mat.sum(axis=1)).tolist()
                for row, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
                    writer.add(r[start:end], table.freqs(row))
        return bytes(out) + writer.finish()

    def _choose(self, shape, r, alphabet, counts, zero_rank):
        """Pick (mode, j, B) by the cost model (module docstring).

        Returns the mode, blocking index, block size, the (blocks x symbols) count matrix and
        the run layout (first run non-zero?, run lengths, run-length stream parts).
        """
        n = r.size
        m = alphabet.size
        kern = choose_kernels()
        lg = _log2_table(n + 1) if kern is not None else None
        if lg is not None:  # numpy's floats, compiled: (v * log2(max(v, 1))).sum()
            def xlogx_sum(v: np.ndarray) -> float:
                return kern.xlogx_sum(np.ascontiguousarray(v, np.int64), lg)

            def xlogx(v: int) -> float:
                return float(v) * float(lg[v])
        else:
            def xlogx_sum(v: np.ndarray) -> float:
                return float(_xlogx(v).sum())

            def xlogx(v: int) -> float:
                return float(_xlogx(v))
        top = int(counts.max())
        mats = {n: counts[None, :]}
        mults: dict[int, np.ndarray] = {}  # np.bincount of a matrix's cells, where known
        counts_xlogx = xlogx_sum(counts)
        best_bits = _side_bits(1, m, top) + (xlogx(n) - counts_xlogx)
        # finer blockings: skip those whose side information alone (rows * m codes of at
        # least the width the largest count of some row needs) exceeds that estimate
        finer = []
        for j, b in _block_sizes(shape)[1:]:
            rows = n // b
            if _side_bits(rows, m, -(-top // rows)) < best_bits and rows * m <= 4 * n + 4096:
                finer.append((j, b))
        if finer:
            fine = finer[-1][1]
            rows = n // fine
            if kern is not None:
                mats[fine], mults[fine] = kern.block_counts(np.ascontiguousarray(r), rows, m)
            else:
                idx = r.reshape(rows, fine) + (np.arange(rows, dtype=np.int32) * m)[:, None]
                mats[fine] = np.bincount(idx.reshape(-1), minlength=rows * m).reshape(rows, m)
            for _, b in finer[:-1]:
                mats[b] = mats[fine].reshape(n // b, b // fine, m).sum(axis=1)
        run_bits = None
        run_info: tuple[bool, np.ndarray, list] = (False, np.zeros(0, np.int64), [])
        # runs mode saves at most the information in the zero mask (n * h2(p0)) and costs at
        # least two tables and a count: skip it when the mask holds less than that
        p0 = float(counts[zero_rank]) / n if zero_rank >= 0 else 0.0
        mask_bits = (
            0.0 if p0 in (0.0, 1.0) else -n * (p0 * math.log2(p0) + (1 - p0) * math.log2(1 - p0))
        )
        if zero_rank >= 0 and (mask_bits > 64 or p0 == 1.0):
            if lg is not None:  # the same runs, tables and float bits, compiled
                first, lengths, run_bits, n_parts, *flat = kern.run_tables(
                    np.ascontiguousarray(r), zero_rank, lg)
                first, parts = bool(first), [tuple(flat[:3]), tuple(flat[3:])][:n_parts]
            else:
                first, lengths = ent.runs(r != zero_rank)
                run_bits, parts = _run_tables(lengths, first)
            run_info = (first, lengths, parts)
        best = (MODE_DENSE, 0, n)
        for j, b in [(0, n), *finer]:
            mat = mats[b]
            rows = mat.shape[0]
            side = _side_bits(rows, m, top if rows == 1 else int(mat.max()))
            cells = counts_xlogx if rows == 1 else _sum_xlogx(mat, lg, mults.get(b))
            dense = side + rows * xlogx(b) - cells
            if dense < best_bits:
                best_bits, best = dense, (MODE_DENSE, j, b)
            if run_bits is not None:
                zeros = mat[:, zero_rank]
                if int(zeros.sum()) == n:
                    est = run_bits
                else:
                    rest = xlogx_sum(b - zeros) - cells + xlogx_sum(zeros)
                    est = run_bits + side + rest
                if est < best_bits:
                    best_bits, best = est, (MODE_RUNS, j, b)
        mode, j, b = best
        return mode, j, b, mats[b], run_info

    # -- decoder -------------------------------------------------------------------------
    def decode_array(
        self, payload: memoryview, shape: tuple[int, ...], limits: DecodeLimits
    ) -> np.ndarray:
        n = math.prod(shape)
        limits.check_elements(n)
        if n == 0:
            require(len(payload) == 0, "rans: payload for an empty tensor")
            return np.zeros(shape, np.float32)
        r = Reader(payload)
        flags = r.u8()
        mode, first, pco, j = flags & 1, bool(flags & 2), bool(flags & 4), flags >> 4
        require(flags & 0x08 == 0, "rans: reserved flag bit set")
        require(mode == MODE_RUNS or not first, "rans: run flag in dense mode")
        sizes = dict(_block_sizes(shape))
        require(j in sizes and (j == 0 or not pco), f"rans: bad blocking {j} for shape {shape}")
        block = sizes[j]
        rows = n // block
        (delta,) = r.unpack("<f")
        require(math.isfinite(delta) and delta > 0, "rans: bad step")
        q_min = unzigzag(r.varint())
        require(abs(q_min) <= 2 * MAX_Q, "rans: q_min out of range")
        n_runs = n_zero = 0
        if mode == MODE_RUNS:
            n_runs = r.varint()
            require(1 <= n_runs <= n, f"rans: {n_runs} runs for {n} elements")
            n_first = (n_runs + 1) // 2
            n_zero = n_runs - n_first if first else n_first
        run_counts = [c for c in (n_zero, n_runs - n_zero) if c]
        if pco:
            streams = [self._pco_stream(r, c, n - 1) for c in run_counts]
            has_values = mode == MODE_DENSE or n_runs - n_zero > 0
            mask = self._mask(streams, first, n_runs, n_zero, n) if mode == MODE_RUNS else None
            if not has_values:
                require(r.remaining() == 0, "rans: trailing bytes")
                return np.zeros(shape, np.float32)
            count = n if mask is None else int(np.count_nonzero(mask))
            u = self._pco_stream(r, count, (1 << 32) - 1)
            require(r.remaining() == 0, "rans: trailing bytes")
            values = (u.astype(np.float64) + q_min) * float(delta)
            values = np.clip(values, -_F32_MAX, _F32_MAX).astype(np.float32)
            return self._scatter(values, mask, shape)
        kern = rows_kernels()
        if kern is not None:  # the same decode in one compiled pass (entropy._rows_kernels)
            status, out = kern.decode_rans(
                np.frombuffer(r.buf, np.uint8), r.pos, r.end, n, rows, mode == MODE_RUNS,
                first, n_runs, n_zero, q_min, float(delta), _cap(n, 1), _cap(n, rows),
                2 * MAX_Q + 1)
            if status == 0:
                return out.reshape(shape)
            # corrupt: the reference below raises its own error and message
        tables = [(c, ent.FreqTable.read(r, 1, n - 1, _cap(n, 1))) for c in run_counts]
        value_table = None
        if mode == MODE_DENSE or n_runs - n_zero > 0:
            value_table = ent.FreqTable.read(r, rows, 2 * MAX_Q + 1, _cap(n, rows))
        reader = ent.AnsReader(r.take(r.remaining()), "rans")
        mask = None
        if mode == MODE_RUNS:
            parts = [t.symbols[reader.read(c, t.freqs(0))] for c, t in tables]
            mask = self._mask(parts, first, n_runs, n_zero, n)
            if value_table is None:
                require(not mask.any(), "rans: non-zero elements without a value table")
                return np.zeros(shape, np.float32)
            per_block = mask.reshape(rows, block).sum(axis=1)
        else:
            per_block = np.full(rows, block)
        sym = np.empty(int(per_block.sum()), np.int32)
        start = 0
        for row, count in enumerate(per_block.tolist()):
            sym[start : start + count] = reader.read(count, value_table.freqs(row))
            start += count
        # the top level may round past float32's range when |x| is near it: saturate
        levels = (value_table.symbols + q_min) * float(delta)
        levels = np.clip(levels, -_F32_MAX, _F32_MAX).astype(np.float32)
        return self._scatter(levels[sym], mask, shape)

    @staticmethod
    def _pco_stream(r: Reader, count: int, max_symbol: int) -> np.ndarray:
        size = r.varint()
        require(size <= r.remaining(), "rans: truncated pco stream")
        return ent.pco_decode(r.take(size), count, max_symbol)

    @staticmethod
    def _mask(parts: list, first: bool, n_runs: int, n_zero: int, n: int) -> np.ndarray:
        """Zero/non-zero mask from the decoded run-length streams (lengths - 1)."""
        lengths = np.empty(n_runs, np.int64)
        it = iter(parts)
        if n_zero:
            lengths[(1 if first else 0) :: 2] = next(it)
        if n_runs - n_zero:
            lengths[(0 if first else 1) :: 2] = next(it)
        return ent.mask_from_runs(first, lengths + 1, n)

    @staticmethod
    def _scatter(values: np.ndarray, mask: np.ndarray | None, shape: tuple[int, ...]):
        if mask is None:
            return values.reshape(shape)
        out = np.zeros(mask.size, np.float32)
        out[mask] = values
        return out.reshape(shape)

    def error_bound(self, x: np.ndarray) -> float:
        """Half the step the encoder uses on ``x``, plus float32 rounding of x / delta and of
        q * delta (at most 2**-22 of the largest magnitude)."""
        if x.size == 0:
            return 0.0
        delta, xmin, xmax, *_ = self._quantize(np.ascontiguousarray(x, np.float32))
        amax = max(-xmin, xmax)
        return 0.5 * float(delta) * (1 + 1e-6) + amax * 2.0**-22 + 1e-30
