"""SLICER: asymmetric top-K filtering, magnitude-split quantization, context-coded positions.

A training-free intermediate-feature codec, in four steps (measured figures for each:
``docs/results/codecs.md``, section "slicer"):

1. **Asymmetric top-K filtering.** Per sign, keep the largest fraction ``keep_pos`` of the
   positive values and ``keep_neg`` of the negative ones; the rest decode to 0 and cost no
   value bits. Thresholds are exact selections, not sorts (:func:`._slicer_quant.kth_largest`).
   Post-BN features and LLM hidden states carry both signs; ReLU maps none below zero.
2. **Magnitude splitting with a distortion budget.** Kept magnitudes ``a >= t`` of each sign
   are quantized on a grid of step ``distortion * t`` (``t``: the smaller threshold): a mean
   squared error of ``(distortion * t)**2 / 12`` per kept value, tied to what filtering throws
   away. The values are split into ``n_blocks`` equal-cardinality blocks (quantiles of ``a``)
   and each block gets its own step by a greedy Lagrangian allocation
   (:func:`._slicer_quant.allocate`): with entropy-coded levels the MSE optimum is one common
   step, and a block is coarsened only when it would need more than ~2 levels per value, the
   others paying its excess error back. A block that is too wide is first cut at its widest
   gap, so outliers get blocks of their own and ordinary values keep the fine step. Blocks
   with equal steps merge (one piece is the common case). Each level decodes at the mean
   position of its values in their cells (one byte per sign), not mid-cell.
3. **Entropy-coded values with context.** Level symbols of both signs share one alphabet,
   coded by rANS with histograms in the payload (:mod:`._slicer_values`). Values at phase-B
   positions (below) are coded per context of their four phase-A neighbours' signed levels:
   spatial correlation predicts magnitude and sign.
4. **Context-coded positions.** The keep mask is coded in two checkerboard phases
   (:mod:`._slicer_mask`): phase A with the probability of its channel's class (4 classes by
   keep rate), phase B knowing its four phase-A neighbours, which catches the clustering of
   activations.

Parameters: ``quality`` in (0, 1] (:func:`quality_settings`: keep ``0.5 + 0.5 q`` for both
signs, distortion 2 -> 3 -> 1; default 0.6); ``keep_pos``, ``keep_neg`` and ``distortion``
override it (any value < 0: from quality); ``n_blocks`` (1-16); ``axis``, the channel axis (1
for NCHW; -1 for (batch, tokens, hidden) LLM states, whose outlier channels then get their own
mask class; out of range: no channels). One threshold and one grid serve the whole tensor: a
batch is filtered as a whole, not per sample (a per-row mode can come behind ``flags`` bits
5-7). The rANS streams go on two lanes (flags bit 4, :class:`.entropy.coder.LaneWriter`):
a decoder runs two state chains side by side; streams of one stack (bit 4 clear) still
decode.

Payload layout and models: ``docs/bitstream.md``, section "slicer". The largest error is the
larger threshold (dropped values) or ``max(o, 256 - o) / 256`` of the widest step (kept ones):
:meth:`SlicerCodec.error_bound`. Non-finite input raises ``ValueError`` at encode time: a
threshold or a grid over NaN or inf means nothing, and silently zeroing them would hide a
broken model.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from . import _slicer_fused as fused
from . import _slicer_fused_enc as fused_enc
from . import _slicer_jit as jit
from . import _slicer_mask as mk
from . import _slicer_values as vl
from ._slicer_quant import (
    MAX_LEVELS,
    MAX_PIECES,
    Grid,
    allocate,
    level_cap,
    quantize_fast,
    split_blocks,
    threshold,
)
from .base import Codec, Param
from .bytes_io import Reader, put_varint
from .entropy.coder import AnsReader, LaneReader, LaneWriter, categorical
from .errors import DecodeLimits, require
from .registry import register_codec

_FLAG_POS, _FLAG_NEG, _FLAG_CLASSES, _FLAG_VALUE_CONTEXT, _FLAG_LANES = 1, 2, 4, 8, 16


def quality_settings(quality: float) -> tuple[float, float]:
    """(keep fraction of each sign, distortion) for a quality in (0, 1].

    Follows the rate/accuracy frontier measured on ResNet-20 (CIFAR-10) and MobileNetV2
    (ImageNet) cuts: keep ``0.5 + 0.5 q``; the step grows from 2 to 3 thresholds while keep
    goes from 0.55 to 0.75 and stays at 3 (a coarser step at a higher keep loses, and so does
    a finer one at a lower keep), then above quality 0.8 falls to 1 threshold at quality 1.
    """
    keep = min(0.5 + 0.5 * quality, 1.0)
    if quality <= 0.8:
        return keep, min(max(2.0 + 5.0 * (keep - 0.55), 2.0), 3.0)
    return keep, 3.0 - 10.0 * (quality - 0.8)


@register_codec("slicer", codec_id=8)
class SlicerCodec(Codec):
    """Top-K filtering per sign, block-allocated uniform grids, context-coded mask (rANS)."""

    reusable = True

    params_spec = (
        Param("quality", float, 0.6, low=0.0, high=1.0, doc="rate/fidelity knob (0, 1]"),
        Param("keep_pos", float, -1.0, low=-1.0, high=1.0, doc="kept fraction of positives"),
        Param("keep_neg", float, -1.0, low=-1.0, high=1.0, doc="kept fraction of negatives"),
        Param("distortion", float, -1.0, low=-1.0, high=64.0, doc="step / threshold"),
        Param("n_blocks", int, 4, low=1, high=16, doc="equal-cardinality magnitude blocks"),
        Param("axis", int, 1, low=-8, high=7, doc="channel axis (out of range: none)"),
    )
    quality_param = "quality"
    quality_grid = (0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 1.0)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        q = self.params["quality"]
        if q <= 0.0:
            raise ValueError("quality must be in (0, 1]")
        keep, distortion = quality_settings(q)
        p = self.params
        self._keep_pos = p["keep_pos"] if p["keep_pos"] >= 0 else keep
        self._keep_neg = p["keep_neg"] if p["keep_neg"] >= 0 else keep
        self._distortion = p["distortion"] if p["distortion"] > 0 else distortion

    def _axis(self, ndim: int) -> int | None:
        a = self.params["axis"]
        return a % ndim if ndim and -ndim <= a < ndim else None

    # -- encoder -------------------------------------------------------------------------
    def _quantize(self, xf: np.ndarray) -> tuple[list[tuple[int, Grid]], np.ndarray, np.ndarray]:
        """(sign, grid) of each kept sign (positives first), the kept mask, and the level
        symbols of the kept elements in C order (negative levels after the positive ones)."""
        if jit.active() and xf.dtype == np.float32:
            fast = quantize_fast(xf, self._keep_pos, self._keep_neg, self._distortion,
                                 self.params["n_blocks"])
            if fast is not None:
                return fast
        hi, lo = float(xf.max()), float(xf.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):
            raise ValueError("slicer: input contains NaN or inf")
        n_pos = int(np.count_nonzero(xf > 0)) if hi > 0 else 0
        n_neg = int(np.count_nonzero(xf < 0)) if lo < 0 else 0
        t_pos = threshold(xf, n_pos, self._keep_pos, 1)
        t_neg = threshold(xf, n_neg, self._keep_neg, -1)
        ref = min(t_pos, t_neg)
        if not math.isfinite(ref):
            return [], np.zeros(xf.size, bool), np.zeros(0, np.int32)
        base = self._distortion * max(ref, max(hi, -lo) * 2.0**-24)  # float32 resolution
        plans = []
        for sign, t, top in ((1, t_pos, hi), (-1, t_neg, -lo)):
            if not math.isfinite(t):
                continue
            t = float(np.float32(t))
            sel = xf >= np.float32(t) if sign > 0 else xf <= np.float32(-t)
            count = int(np.count_nonzero(sel))
            blocks = None
            # blocks only matter when some block could outgrow its level cap
            n_blocks = self.params["n_blocks"]
            if n_blocks > 1 and (top - t) / base > level_cap(count / n_blocks):
                a = np.take(xf, np.flatnonzero(sel)) * sign
                blocks = split_blocks(a, n_blocks, base)
            plans.append((sign, allocate(t, count, base, blocks, top), sel))
        # boolean-mask indexing is ~4x slower than flatnonzero + take in numpy
        if len(plans) == 1:
            sign, grid, kept = plans[0]
            kept_x = np.take(xf, np.flatnonzero(kept))
            values, grid = grid.quantize(kept_x if sign > 0 else -kept_x)
            return [(sign, grid)], kept, values
        (_, g_pos, sel_pos), (_, g_neg, sel_neg) = plans
        kept = sel_pos | sel_neg
        kept_x = np.take(xf, np.flatnonzero(kept))
        pos, neg = np.flatnonzero(kept_x > 0), np.flatnonzero(kept_x < 0)
        values = np.empty(kept_x.size, np.int32)
        values[pos], g_pos = g_pos.quantize(np.take(kept_x, pos))
        lv, g_neg = g_neg.quantize(-np.take(kept_x, neg))
        values[neg] = lv + g_pos.levels
        return [(1, g_pos), (-1, g_neg)], kept, values

    def encode_array(self, x: np.ndarray) -> bytes:
        if x.size == 0:
            return b""
        if jit.active() and x.dtype == np.float32:  # two compiled calls (one-piece grids)
            payload = fused_enc.encode_fast(
                x.reshape(-1), self._keep_pos, self._keep_neg, self._distortion,
                self.params["n_blocks"], mk.geometry(x.shape, self._axis(x.ndim)))
            if payload is not None:
                return payload
        signs, kept, values = self._quantize(x.reshape(-1))
        if not signs:
            return bytes([0])
        flags = 0
        head = bytearray()
        for sign, grid in signs:
            flags |= _FLAG_POS if sign > 0 else _FLAG_NEG
            head += struct.pack("<f", grid.t)
            head.append(grid.offset)
            head.append(grid.starts.size)
            for step, cells in zip(grid.steps.tolist(), grid.cells.tolist(), strict=True):
                head += struct.pack("<f", step)
                put_varint(head, cells)
            head += grid.starts[1:].astype("<f4").tobytes()
        n_levels = sum(g.levels for _, g in signs)
        geo = mk.geometry(x.shape, self._axis(x.ndim))
        planes = kept.reshape(geo.planes, geo.plane_size)
        if jit.active():  # the mask and the levels in one compiled pass
            more, tail = fused_enc.encode_tail(planes, values, [(s, g.levels) for s, g in signs],
                                               geo)
            return bytes([flags | more]) + bytes(head) + tail
        mask_a = np.take(planes, geo.phase_a, axis=1)
        mask_b = np.take(planes, geo.phase_b, axis=1)
        parts = LaneWriter()  # streams in decoding order, on two rANS lanes
        flags |= _FLAG_LANES | self._encode_mask(planes, mask_a, mask_b, geo, head, parts)
        if n_levels > 1:
            sym = np.full(kept.size, n_levels, np.int32)  # n_levels: dropped
            sym[np.flatnonzero(kept)] = values
            sym = sym.reshape(geo.planes, geo.plane_size)
            sym_a = np.take(sym, geo.phase_a, axis=1)
            phased = (
                sym_a,
                np.compress(mask_a.reshape(-1), sym_a),
                np.compress(mask_b.reshape(-1), np.take(sym, geo.phase_b, axis=1)),
            )
            flags |= self._encode_values(*phased, mask_b, geo, signs, head, parts)
        return bytes([flags]) + bytes(head) + parts.finish()

    @staticmethod
    def _encode_mask(planes, mask_a, mask_b, geo, head: bytearray, parts: LaneWriter) -> int:
        """Mask model into ``head``, its rANS streams into ``parts``; returns the flag bits."""
        flags = 0
        ctx = mk.neighbour_context(mask_a, geo)
        rate = np.count_nonzero(planes, axis=1).reshape(-1, geo.channels).sum(axis=0)
        cls_ch = mk.channel_classes(rate / (geo.planes // geo.channels * geo.plane_size))
        cls = np.tile(cls_ch, geo.planes // geo.channels)
        code_a, code_b, use_classes = mk.fit_model(mask_a, mask_b, ctx, cls, geo.channels)
        if use_classes:
            flags |= _FLAG_CLASSES
            c4 = np.zeros((geo.channels + 3) // 4 * 4, np.uint8)
            c4[: geo.channels] = cls_ch
            c4 = c4.reshape(-1, 4)
            head += (c4[:, 0] | c4[:, 1] << 2 | c4[:, 2] << 4 | c4[:, 3] << 6).tobytes()
        else:
            cls = np.zeros_like(cls)
        head += code_a.tobytes()
        groups_a, plane_order = mk.phase_a_groups(cls, code_a, geo.phase_a.size)
        sorted_a = mask_a if plane_order is None else mask_a[plane_order]
        for symbols, model in groups_a.encode(sorted_a):
            parts.add_model(symbols, model)
        if mask_b.size:
            head += code_b.tobytes()
            key = ctx + (cls * mk.N_NEIGHBOUR).astype(np.uint8)[:, None]
            for symbols, model in mk.phase_b_groups(key, code_b).encode(mask_b):
                parts.add_model(symbols, model)
        return flags

    @staticmethod
    def _encode_values(
        sym_a, kept_a, kept_b, mask_b, geo, signs, head: bytearray, parts: LaneWriter
    ) -> int:
        """Level symbols in phase order (``sym_a``: phase A's planes, dropped = ``L``;
        ``kept_a``, ``kept_b``: the kept ones of each phase): phase A with one histogram,
        phase B one histogram per neighbour context when there are enough of them (>= 32 a
        level). Returns flag bits."""
        n_levels = sum(g.levels for _, g in signs)
        counts = np.bincount(kept_a, minlength=n_levels) + np.bincount(kept_b, minlength=n_levels)
        if not (mask_b.size and kept_b.size >= 32 * n_levels):
            table, freqs = vl.histogram_bytes(counts[None])
            head += table
            parts.add_model(np.concatenate([kept_a, kept_b]), categorical(freqs[0]))
            return 0
        signed = vl.signed_levels([(sign, g.levels) for sign, g in signs])
        shift = vl.context_shift(float(counts @ np.abs(signed[:-1])) / counts.sum())
        vctx = vl.value_contexts(np.take(signed, sym_a), geo.neighbours, shift)
        vctx = np.compress(mask_b.reshape(-1), vctx)
        hist = np.zeros((1 + vl.N_CONTEXTS, n_levels), np.int64)
        hist[0] = np.bincount(kept_a, minlength=n_levels)
        hist[1:] = np.bincount(
            vctx * n_levels + kept_b, minlength=vl.N_CONTEXTS * n_levels
        ).reshape(vl.N_CONTEXTS, n_levels)
        sizes = hist[1:].sum(axis=1)
        used = np.flatnonzero(sizes)
        head.append(shift)
        head += int(np.sum(1 << used)).to_bytes(2, "little")
        table, freqs = vl.histogram_bytes(hist[np.concatenate([[0], used + 1])])
        head += table
        parts.add_model(kept_a, categorical(freqs[0]))
        by_context = kept_b[np.argsort(vctx.astype(np.uint8), kind="stable")]
        ends = np.cumsum(sizes)
        for i, c in enumerate(used):
            part = by_context[ends[c] - sizes[c] : ends[c]]
            parts.add_model(part, categorical(freqs[1 + i]))
        return _FLAG_VALUE_CONTEXT

    # -- decoder -------------------------------------------------------------------------
    def decode_array(
        self, payload: memoryview, shape: tuple[int, ...], limits: DecodeLimits
    ) -> np.ndarray:
        key = (shape, self.params["axis"]) if jit.ENABLED and type(shape) is tuple else None
        run = fused.DECODERS.get(key) if key else None
        if run is not None:  # a shape decoded before: the compiled pass, its arguments bound
            return run(payload)
        n = math.prod(shape)
        if n == 0:
            require(len(payload) == 0, "slicer: payload for an empty tensor")
            return np.zeros(shape, np.float32)
        if jit.active():  # the whole decoder in one compiled pass
            geo = mk.geometry(shape, self._axis(len(shape)))
            run = fused.decoder(geo, tuple(shape), mk.RESCALE)
            if key and geo.plane_size <= mk._CACHED_PLANE:  # kept as the geometry is
                fused.keep(key, run)
            return run(payload)
        r = Reader(payload)
        flags = r.u8()
        require(flags < 32, f"slicer: reserved flag bits set ({flags:#x})")
        grids = []
        for bit, sign in ((_FLAG_POS, 1.0), (_FLAG_NEG, -1.0)):
            if flags & bit:
                grids.append((sign, self._read_grid(r)))
        if not grids:
            require(flags == 0 and r.remaining() == 0, "slicer: bad all-dropped payload")
            return np.zeros(shape, np.float32)
        lut = np.concatenate([sign * g.reconstruction() for sign, g in grids] + [[0.0]])
        lut = lut.astype(np.float32)  # the last entry: dropped elements
        n_levels = lut.size - 1

        geo = mk.geometry(shape, self._axis(len(shape)))
        n_a, n_b = geo.phase_a.size, geo.phase_b.size
        cls, code_a, code_b = self._read_mask_model(r, flags, geo)
        use_ctx = bool(flags & _FLAG_VALUE_CONTEXT)
        require(not use_ctx or (n_b > 0 and n_levels > 1), "slicer: value context without use")
        shift, used, freqs = 0, [], None
        if use_ctx:
            shift = r.u8()
            require(shift <= 15, "slicer: bad context shift")
            present = int.from_bytes(r.take(2), "little")
            require(present < 1 << vl.N_CONTEXTS, "slicer: bad context set")
            used = [c for c in range(vl.N_CONTEXTS) if present >> c & 1]
            freqs = vl.read_histograms(r, 1 + len(used), n_levels)
        elif n_levels > 1:
            freqs = vl.read_histograms(r, 1, n_levels)
        lanes = LaneReader if flags & _FLAG_LANES else AnsReader  # bit 4 clear: one stack
        coder = lanes(r.take(r.remaining()), "slicer")
        groups_a, plane_order = mk.phase_a_groups(cls, code_a, n_a)
        mask_a = groups_a.decode(coder).reshape(geo.planes, n_a)
        if plane_order is not None:
            unsorted = np.empty_like(mask_a)
            unsorted[plane_order] = mask_a
            mask_a = unsorted
            del plane_order, unsorted
        mask_b = np.zeros((geo.planes, n_b), bool)
        if n_b:
            ctx = mk.neighbour_context(mask_a, geo)
            key = ctx + (cls * mk.N_NEIGHBOUR).astype(np.uint8)[:, None]
            mask_b = mk.phase_b_groups(key, code_b).decode(coder).reshape(geo.planes, n_b)
        # boolean-mask scatters: no index arrays (8 bytes a kept element) on hostile shapes
        sym_a = np.full((geo.planes, n_a), n_levels, np.int32)  # n_levels: dropped
        sym_b = np.full((geo.planes, n_b), n_levels, np.int32)
        kept_a, kept_b = int(np.count_nonzero(mask_a)), int(np.count_nonzero(mask_b))
        if n_levels == 1:
            sym_a[mask_a] = 0
            sym_b[mask_b] = 0
        elif not use_ctx:
            both = self._decode_part(coder, freqs[0], kept_a + kept_b)
            sym_a[mask_a] = both[:kept_a]
            sym_b[mask_b] = both[kept_a:]
            del both
        else:
            sym_a[mask_a] = self._decode_part(coder, freqs[0], kept_a)
            signed = vl.signed_levels([(sign, g.levels) for sign, g in grids])
            vctx = vl.value_contexts(np.take(signed, sym_a), geo.neighbours, shift)[mask_b]
            sizes = np.bincount(vctx, minlength=vl.N_CONTEXTS)
            require(
                np.array_equal(np.flatnonzero(sizes), used),
                "slicer: value contexts do not match the mask",
            )
            parts = [
                self._decode_part(coder, freqs[1 + i], int(sizes[c]))
                for i, c in enumerate(used)
            ]
            vb = np.empty(vctx.size, np.int32)
            by_context = np.concatenate(parts) if parts else np.zeros(0, np.int32)
            vb[np.argsort(vctx.astype(np.uint8), kind="stable")] = by_context
            sym_b[mask_b] = vb
        require(coder.is_empty(), "slicer: trailing rANS data")
        del mask_a, mask_b
        out = np.empty((geo.planes, geo.plane_size), np.float32)
        out[:, geo.phase_a] = np.take(lut, sym_a)
        del sym_a
        out[:, geo.phase_b] = np.take(lut, sym_b)
        return out.reshape(shape)

    @staticmethod
    def _read_mask_model(r: Reader, flags: int, geo: mk.Geometry):
        """Class of every plane, and the phase A / phase B probability codes."""
        if flags & _FLAG_CLASSES:
            packed = np.frombuffer(r.take((geo.channels + 3) // 4), np.uint8)
            cls_ch = ((packed[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)
            cls = np.tile(cls_ch[: geo.channels], geo.planes // geo.channels)
            n_cls = mk.N_CLASSES
        else:
            cls = np.zeros(geo.planes, np.uint8)
            n_cls = 1
        code_a = np.frombuffer(r.take(n_cls), np.uint8)
        code_b = code_a
        if geo.phase_b.size:
            code_b = np.frombuffer(r.take(n_cls * mk.N_NEIGHBOUR), np.uint8)
        require(bool(code_a.all() and code_b.all()), "slicer: zero mask probability")
        return cls, code_a, code_b

    @staticmethod
    def _decode_part(coder: LaneReader, freqs: np.ndarray, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, np.int32)
        return coder.read_model(count, categorical(freqs))

    @staticmethod
    def _read_grid(r: Reader) -> Grid:
        (t,) = r.unpack("<f")
        require(math.isfinite(t) and t > 0, "slicer: bad threshold")
        offset = r.u8()
        require(0 < offset, "slicer: reconstruction offset 0")
        pieces = r.u8()
        require(1 <= pieces <= MAX_PIECES, f"slicer: {pieces} grid pieces")
        steps, cells = [], []
        for _ in range(pieces):
            steps.append(r.unpack("<f")[0])
            cells.append(r.varint())
            require(1 <= cells[-1] and sum(cells) <= MAX_LEVELS, "slicer: bad cell count")
        starts = np.frombuffer(r.take(4 * (pieces - 1)), "<f4").astype(np.float32)
        starts = np.concatenate([np.array([t], np.float32), starts])
        steps = np.array(steps, np.float32)
        require(bool(np.isfinite(steps).all() and (steps > 0).all()), "slicer: bad grid steps")
        require(bool(np.isfinite(starts).all()), "slicer: bad grid starts")
        require(bool((np.diff(starts) > 0).all()), "slicer: grid starts not increasing")
        return Grid(t, starts, steps, np.array(cells, np.int64), offset)

    # -- bound -----------------------------------------------------------------------------
    def error_bound(self, x: np.ndarray) -> float:
        """Dropped values: below their sign's threshold (all of a sign kept at 0 %); kept
        values: the widest half-cell of their grid; plus float32 rounding."""
        if x.size == 0:
            return 0.0
        xf = np.ascontiguousarray(x, np.float32).reshape(-1)
        signs, _, _ = self._quantize(xf)
        bound = 0.0
        kept_signs = {s for s, _ in signs}
        for sign in (1, -1):
            if sign not in kept_signs:
                bound = max(bound, float(np.max(np.maximum(sign * xf, 0.0))))
        for _, grid in signs:
            bound = max(bound, grid.t, grid.max_error())
        top = float(np.max(np.abs(xf)))
        return bound * (1 + 1e-5) + top * 2.0**-20 + 1e-30
