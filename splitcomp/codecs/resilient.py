"""An error-resilient stream mode: another codec's payload cut into independently decodable,
individually checked slices, so a bit error costs one slice, which the decoder conceals.

Raw radio links deliver bytes with bit errors rather than losing whole packets. With an
ordinary stream one flipped bit fails the container's CRC and the request is lost. The
``resilient`` codec wraps an *inner* codec (its parameters travel in the header after the
wrapper's own): the tensor is cut into ``slices`` slices along ``slice_axis`` (rows of a
feature map by default: one concealed row costs a learned bottleneck less than a group of
channels, ``docs/results/bit_errors.json``), each coded by the inner codec on its own and
followed by a CRC-16. Its streams use the container's resilient framing (``SR`` / ``SQ``): the
container's CRC covers the header only, a header error still loses the request.

Decoding is strict by default (a failed slice check is a :class:`BitstreamError`, as any
other codec's corruption): whoever wants concealment asks for it, with
:func:`decode_resilient` (returns the number of slices concealed) or inside
:func:`concealing`. A concealed slice decodes to the inner ``bottleneck`` codec's channel
medians (what symbol 0 decodes to: the latent's most likely value), else to zeros.

Layout: ``docs/bitstream.md``, section "resilient".
"""

from __future__ import annotations

import binascii
import contextlib
import copy
import functools
import math
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Codec, Param
from .bottleneck import BottleneckCodec, BottleneckTables
from .container import unpack
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits, require
from .registry import codec_class, register_codec

if TYPE_CHECKING:
    import torch

#: the codecs a resilient stream may wrap, by their index on the wire (append only)
INNER_CODECS = ("fp32", "fp16", "bf16", "int8", "blockwise8", "zstd", "rans", "slicer",
                "tokenwise", "bottleneck")
#: most slices a tensor is cut into
MAX_SLICES = 256
#: bytes of each slice's check (CRC-16/CCITT, ``binascii.crc_hqx`` from 0xFFFF)
CHECK_BYTES = 2
_OWN = ("inner", "slices", "slice_axis")
#: what an inner decoder may raise on a slice it cannot decode
_DECODE_ERRORS = (BitstreamError, ValueError, IndexError, OverflowError, RuntimeError, TypeError)


class Concealed:
    """How many slices the decoder concealed while this object was in scope."""

    __slots__ = ("slices",)

    def __init__(self) -> None:
        self.slices = 0


_CONCEAL: ContextVar[Concealed | None] = ContextVar("resilient_conceal", default=None)


@contextlib.contextmanager
def concealing() -> Iterator[Concealed]:
    """Within the block, resilient streams conceal the slices that fail their checks instead
    of raising; the object yielded counts them (per thread and asyncio task)."""
    counter = Concealed()
    token = _CONCEAL.set(counter)
    try:
        yield counter
    finally:
        _CONCEAL.reset(token)


def decode_resilient(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    contexts: Mapping[int, object] | None = None,
) -> tuple[tuple[torch.Tensor, ...], int]:
    """``(tensors, slices concealed)`` of any bitstream, concealing the slices of resilient
    streams that fail their checks; anything else wrong (a header error, any error in an
    ordinary stream) raises :class:`BitstreamError`: the request is lost."""
    with concealing() as counter:
        out = unpack(data, limits, contexts=contexts)
    return out, counter.slices


def crc16(data: bytes | memoryview) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, from 0xFFFF): every odd number of bit errors,
    every burst of up to 16 bits."""
    return binascii.crc_hqx(data, 0xFFFF)


def _offset_width(payload_bytes: int) -> int:
    """Bytes of each slice end offset: the fewest that hold the payload's length."""
    return max(1, (payload_bytes.bit_length() + 7) // 8)


@functools.lru_cache(maxsize=256)
def _sub_tables(tables: BottleneckTables, lo: int, hi: int) -> BottleneckTables:
    """The ``bottleneck`` tables of channels ``lo .. hi - 1`` (a slice along the channels)."""
    return BottleneckTables(tables.medians[lo:hi], tables.offsets[lo:hi], tables.rows[lo:hi])


@register_codec("resilient", codec_id=11)
class ResilientCodec(Codec):
    """Another codec's payload in ``slices`` independently decodable, checked slices."""

    params_spec = (
        Param("inner", str, "int8", choices=INNER_CODECS, doc="the codec of every slice"),
        Param("slices", int, 8, low=1, high=MAX_SLICES, doc="slices a tensor is cut into"),
        Param("slice_axis", int, 2, low=-8, high=7,
              doc="the axis cut (out of range: the last one)"),
    )
    #: the container writes the resilient framing (CRC over the header only)
    checks_payload = True

    @classmethod
    def nested_params_spec(cls, params: Mapping[str, Any]) -> tuple[Param, ...]:
        """The inner codec's parameters: in the header after the wrapper's own."""
        return codec_class(params["inner"]).params_spec

    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in _OWN if k in params}
        super().__init__(**own)
        inner_cls = codec_class(self.params["inner"])
        clash = {p.name for p in inner_cls.params_spec} & set(_OWN)
        if clash:
            raise ValueError(f"resilient: inner parameter(s) {sorted(clash)} clash")
        self.inner: Codec = inner_cls(**params)
        self.params.update(self.inner.params)

    def session_context(self) -> bytes | None:
        return self.inner.session_context()

    def context_owner(self) -> Codec:
        return self.inner.context_owner()

    # -- geometry ----------------------------------------------------------------------------
    def _axis(self, ndim: int) -> int | None:
        """The axis cut: ``slice_axis``, the last one where that is out of range; None for a
        scalar (one slice)."""
        a = self.params["slice_axis"]
        if ndim == 0:
            return None
        return a % ndim if -ndim <= a < ndim else ndim - 1

    def _bounds(self, shape: tuple[int, ...]) -> tuple[int | None, list[int]]:
        """(the axis cut, None: a scalar; slice boundaries along it)."""
        axis = self._axis(len(shape))
        length = shape[axis] if axis is not None else math.prod(shape)
        s = min(self.params["slices"], length)
        return axis, [k * length // s for k in range(s + 1)] if s else [0]

    @staticmethod
    def _index(axis: int | None, ndim: int, lo: int, hi: int) -> tuple[slice, ...]:
        if axis is None:
            return (slice(lo, hi),)
        return (slice(None),) * axis + (slice(lo, hi),) + (slice(None),) * (ndim - axis - 1)

    def _codec_for(self, axis: int | None, lo: int, hi: int) -> Codec:
        """The inner codec for one slice: a ``bottleneck`` with tables cut along its channel
        axis codes those channels under their own rows."""
        inner = self.inner
        if isinstance(inner, BottleneckCodec) and inner.context is not None and axis == 1:
            sub = copy.copy(inner)
            sub.context = _sub_tables(inner.context, lo, hi)
            return sub
        return inner

    def _slices(self, x_shape: tuple[int, ...]) -> Iterator[tuple[tuple[slice, ...], Codec]]:
        axis, b = self._bounds(x_shape)
        for lo, hi in zip(b, b[1:], strict=False):
            yield self._index(axis, len(x_shape), lo, hi), self._codec_for(axis, lo, hi)

    # -- Codec -------------------------------------------------------------------------------
    def encode_array(self, x: np.ndarray) -> bytes:
        if x.size == 0:
            return b""
        view = x.reshape(-1) if self._axis(x.ndim) is None else x
        bodies = []
        for index, codec in self._slices(x.shape):
            part = codec.encode_array(np.ascontiguousarray(view[index]))
            bodies.append(part + crc16(part).to_bytes(CHECK_BYTES, "little"))
        ends = np.cumsum([len(b) for b in bodies[:-1]], dtype=np.int64).tolist()
        total = sum(len(b) for b in bodies)
        # the offsets' width is the payload length's (which the protected header holds): the
        # smallest w with width(w * offsets + total) == w (it only grows with w)
        w = 1
        while _offset_width(w * len(ends) + total) != w:
            w += 1
        return b"".join(e.to_bytes(w, "little") for e in ends) + b"".join(bodies)

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        n = math.prod(shape)
        if n == 0:
            require(len(payload) == 0, "resilient: payload for an empty tensor")
            return np.zeros(shape, np.float32)
        counter = _CONCEAL.get()
        axis, b = self._bounds(shape)
        s = len(b) - 1
        w = _offset_width(len(payload))
        table = (s - 1) * w
        require(len(payload) >= table, "resilient: payload shorter than its slice table")
        ends = [int.from_bytes(payload[k * w:(k + 1) * w], "little") + table
                for k in range(s - 1)] + [len(payload)]
        out: np.ndarray | None = None
        start = table
        for k, ((index, codec), end) in enumerate(zip(self._slices(shape), ends, strict=True)):
            sub_shape = self._sub_shape(shape, axis, b[k], b[k + 1])
            part = self._slice(payload, start, end, sub_shape, codec, limits)
            start = end
            if isinstance(part, str):
                if counter is None:
                    raise BitstreamError(f"resilient: slice {k} of {s}: {part}")
                counter.slices += 1
                part = self._concealment(codec, sub_shape, axis)
            if s == 1:
                return part.reshape(shape)
            if out is None:
                out = np.empty(shape, np.float32)
            (out.reshape(-1) if axis is None else out)[index] = part
        assert out is not None
        return out

    @staticmethod
    def _sub_shape(shape: tuple[int, ...], axis: int | None, lo: int, hi: int
                   ) -> tuple[int, ...]:
        if axis is None:
            return (hi - lo,)
        return (*shape[:axis], hi - lo, *shape[axis + 1:])

    @staticmethod
    def _slice(payload: memoryview, start: int, end: int, sub_shape: tuple[int, ...],
               codec: Codec, limits: DecodeLimits) -> np.ndarray | str:
        """A slice decoded, or why it cannot be (bad bounds, CRC mismatch, inner error)."""
        if not start + CHECK_BYTES <= end <= len(payload):
            return "bad slice bounds (corrupt offsets)"
        body = payload[start:end - CHECK_BYTES]
        if crc16(body) != int.from_bytes(payload[end - CHECK_BYTES:end], "little"):
            return "CRC mismatch"
        try:
            arr = np.asarray(codec.decode_array(body, sub_shape, limits), np.float32)
        except _DECODE_ERRORS as e:
            return f"{codec.name}: corrupt payload ({e})"
        return arr if arr.shape == sub_shape else f"{codec.name}: decoded shape mismatch"

    @staticmethod
    def _concealment(codec: Codec, sub_shape: tuple[int, ...], axis: int | None) -> np.ndarray:
        """What a lost slice decodes to: a ``bottleneck`` with tables, its channel medians
        (along axis 1); anything else, zeros."""
        t = codec.context if isinstance(codec, BottleneckCodec) else None
        if t is None or len(sub_shape) < 2 or axis is None:
            return np.zeros(sub_shape, np.float32)
        med = t.medians.reshape(1, -1, *([1] * (len(sub_shape) - 2)))
        return np.broadcast_to(med, sub_shape).astype(np.float32)

    def error_bound(self, x: np.ndarray) -> float:
        if x.size == 0:
            return 0.0
        view = x.reshape(-1) if self._axis(x.ndim) is None else x
        return max(codec.error_bound(np.ascontiguousarray(view[index]))
                   for index, codec in self._slices(x.shape))
