"""The codec interface: one class per codec, parameters declared, per-tensor payloads.

A codec only turns one float32 array into payload bytes and back. The container
(:mod:`splitcomp.codecs.container`) adds everything else a decoder needs: codec id,
parameters, shapes, dtypes and a CRC, so a bitstream is self-describing.
"""

from __future__ import annotations

import abc
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .bytes_io import Reader, put_varint, unzigzag, zigzag
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits, require

if TYPE_CHECKING:  # torch only in the adapters (encode, decode): the core is numpy
    import torch

    from .contexts import ContextRegistry

    TensorsLike = torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class Param:
    """A declared codec parameter. ``kind`` is one of int, float, bool, str (with choices).

    Floats are stored as float32 on the wire; the codec rounds them the same way on
    construction, so the encoder and the decoder see identical values.
    """

    name: str
    kind: type
    default: Any
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    doc: str = ""

    def coerce(self, value: Any) -> Any:
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_, int)):
                raise TypeError(f"{self.name}: expected bool, got {value!r}")
            return bool(value)
        if self.kind is int:
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"{self.name}: expected int, got {value!r}")
            value = int(value)
        elif self.kind is float:
            # the shortest decimal that round-trips through float32: the decoder rebuilds the
            # same value from the wire, and it prints as the user wrote it
            value = float(str(np.float32(value)))
        elif self.kind is str:
            if value not in self.choices:
                raise ValueError(f"{self.name}: expected one of {self.choices}, got {value!r}")
            return value
        if self.low is not None and value < self.low:
            raise ValueError(f"{self.name}={value} below {self.low}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{self.name}={value} above {self.high}")
        return value


def encode_params(spec: Sequence[Param], params: Mapping[str, Any]) -> bytes:
    """The wire form of ``params`` in ``spec``'s order (the container's header)."""
    out = bytearray()
    for p in spec:
        v = params[p.name]
        if p.kind is bool:
            out.append(1 if v else 0)
        elif p.kind is int:
            put_varint(out, zigzag(v))
        elif p.kind is float:
            out += struct.pack("<f", v)
        elif p.kind is str:
            out.append(p.choices.index(v))
        else:  # pragma: no cover - guarded by Param
            raise TypeError(p.kind)
    return bytes(out)


def decode_params(spec: Sequence[Param], r: Reader) -> dict[str, Any]:
    """Inverse of :func:`encode_params`: BitstreamError for a value no codec writes."""
    params: dict[str, Any] = {}
    for p in spec:
        if p.kind is bool:
            b = r.u8()
            require(b in (0, 1), f"param {p.name}: bad bool {b}")
            params[p.name] = bool(b)
        elif p.kind is int:
            params[p.name] = unzigzag(r.varint())
        elif p.kind is float:
            (v,) = r.unpack("<f")
            require(math.isfinite(v), f"param {p.name}: not finite")
            params[p.name] = v
        elif p.kind is str:
            i = r.u8()
            require(i < len(p.choices), f"param {p.name}: bad choice {i}")
            params[p.name] = p.choices[i]
    return params


class Codec(abc.ABC):
    """Base class of every intermediate-feature codec.

    Subclasses set ``params_spec``, implement :meth:`encode_array` / :meth:`decode_array`,
    and register with :func:`~splitcomp.codecs.registry.register_codec`.
    """

    name: ClassVar[str] = ""
    codec_id: ClassVar[int] = 0
    lossless: ClassVar[bool] = False
    params_spec: ClassVar[tuple[Param, ...]] = ()
    #: name of the parameter that trades rate for fidelity (``--quality``), if any
    quality_param: ClassVar[str | None] = None
    #: values of ``quality_param`` from the lowest rate to the highest, for target searches
    quality_grid: ClassVar[tuple[float, ...]] = ()
    #: whether the codec codes against a context sent once per session (see the hooks below)
    has_session_context: ClassVar[bool] = False
    #: whether streams decode against the previous token's decoded row, session state both
    #: ends keep (``tokenwise`` with previous-token prediction: ``_tokenwise_temporal``)
    uses_previous_row: bool = False
    #: whether an instance is an immutable value of its parameters, so the container may
    #: reuse one decoder per parameter set instead of building it for every stream (off for
    #: codecs that bind a session context or an inner codec when built; per parameters:
    #: :meth:`reusable_for`)
    reusable: ClassVar[bool] = False

    @classmethod
    def reusable_for(cls, params: Mapping[str, Any]) -> bool:
        """Whether a decoder built with ``params`` is a value of them alone (:attr:`reusable`),
        so the container may keep it, and what it parsed of a header, for later streams."""
        return cls.reusable

    def __init__(self, **params: Any) -> None:
        known = {p.name: p for p in self.params_spec}
        unknown = set(params) - set(known)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}")
        self.params: dict[str, Any] = {
            p.name: p.coerce(params.get(p.name, p.default)) for p in self.params_spec
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # -- public API ------------------------------------------------------------------
    def encode(self, tensors: TensorsLike, compact: bool = False) -> bytes:
        """Encode one tensor or a sequence of tensors into one self-describing bitstream;
        ``compact``: one tensor, its header a registered template's id (:mod:`.compact`)."""
        from .container import pack

        return pack(self, tensors, compact)

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        limits: DecodeLimits = DEFAULT_LIMITS,
        contexts: Mapping[int, object] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Decode a bitstream made by this codec; returns the tensors in their original dtypes.

        ``contexts`` (key -> context from :meth:`load_context`): session contexts the stream
        may name, found before those registered in this process.
        """
        from .container import unpack

        return unpack(data, limits=limits, expect_codec=self.codec_id, contexts=contexts)

    def encode_numpy(self, arrays: np.ndarray | Sequence[np.ndarray],
                     compact: bool = False) -> bytes:
        """:meth:`encode` for numpy arrays, without torch: the same bytes for the same values."""
        from .container import pack_arrays

        return pack_arrays(self, arrays, compact)

    def decode_numpy(
        self,
        data: bytes | bytearray | memoryview,
        limits: DecodeLimits = DEFAULT_LIMITS,
        contexts: Mapping[int, object] | None = None,
    ) -> tuple[np.ndarray, ...]:
        """:meth:`decode` into numpy arrays, without torch."""
        from .container import unpack_arrays

        return unpack_arrays(data, limits=limits, expect_codec=self.codec_id, contexts=contexts)

    # -- session contexts --------------------------------------------------------------
    # A codec with ``has_session_context`` codes against static side information sent once
    # per session (the ``tokenwise`` codec's calibration); its streams name the context by a
    # key. A runtime sends :meth:`session_context` when a session opens, the peer parses it
    # with :meth:`load_context` and decodes that session's streams with
    # ``decode(..., contexts={context_key(ctx): ctx})``.
    def session_context(self) -> bytes | None:
        """The bytes of the context this instance codes against (None: none)."""
        return None

    def context_owner(self) -> Codec:
        """The codec whose session context this one codes against: itself, or the codec a
        wrapper (``resilient``) delegates to; a runtime names the context by its id."""
        return self

    @classmethod
    def load_context(cls, data: bytes | bytearray | memoryview) -> object:
        """Parse and validate context bytes (a peer's: untrusted); raises BitstreamError."""
        raise BitstreamError(f"codec {cls.name!r} has no session context")

    @classmethod
    def context_key(cls, context: object) -> int:
        """The key this codec's streams name ``context`` (from :meth:`load_context`) by."""
        raise BitstreamError(f"codec {cls.name!r} has no session context")

    @classmethod
    def local_context(cls, digest: bytes) -> object | None:
        """A context this process holds (registered) whose bytes have the SHA-256 ``digest``
        (how sessions name contexts), else None."""
        return None

    # -- what a codec implements -----------------------------------------------------
    @abc.abstractmethod
    def encode_array(self, x: np.ndarray) -> bytes:
        """Payload for one float32, C-contiguous array (any shape, possibly empty)."""

    @abc.abstractmethod
    def decode_array(
        self, payload: memoryview, shape: tuple[int, ...], limits: DecodeLimits
    ) -> np.ndarray:
        """Inverse of :meth:`encode_array`: a float32 array of ``shape``.

        Must raise :class:`~splitcomp.codecs.errors.BitstreamError` for any payload it
        cannot have produced, and never allocate more than ``shape`` (already checked
        against ``limits``) or the payload size justify.
        """

    def decode_raw(
        self, payload: memoryview, shape: tuple[int, ...], limits: DecodeLimits
    ) -> RawArray | None:
        """Optional: the payload's stored values and the affine map back to float32, for a
        runtime that dequantizes elsewhere (many streams at once, on a GPU). The same checks
        as :meth:`decode_array`; ``dequantize()`` of it must equal that, bit for bit.
        None (the default): no raw form, use :meth:`decode_array`."""
        return None

    def error_bound(self, x: np.ndarray) -> float:
        """Largest absolute error this codec allows itself on ``x`` (0 for lossless codecs)."""
        return 0.0


@dataclass(frozen=True)
class RawArray:
    """Stored values before dequantization: ``x = (values - zero[g]) * scale[g]`` in float32,
    group ``g`` holding ``group`` consecutive values (the last one may be short), reshaped to
    ``stored_shape`` whose axis 0 is then moved to ``axis`` (None: stored as it is).
    ``scale``/``zero`` None: that step is skipped (fp16 values: a plain conversion)."""

    values: np.ndarray  #: 1-D, the stored dtype (uint8, int8, float16, float32)
    scale: np.ndarray | None  #: float32, one per group
    zero: np.ndarray | None  #: float32, one per group
    group: int
    stored_shape: tuple[int, ...]
    axis: int | None = None

    def dequantize(self) -> np.ndarray:
        """The float32 array (numpy: the reference a runtime's dequantizer must equal)."""
        x = self.values.astype(np.float32)
        g = max(self.group, 1)
        full = x.size // g  # whole groups in place (a view), the short last one after them
        head, tail = x[: full * g].reshape(full, g), x[full * g :]
        if self.zero is not None:
            head -= self.zero[:full, None]
            tail -= self.zero[full:full + 1]
        if self.scale is not None:
            head *= self.scale[:full, None]
            tail *= self.scale[full:full + 1]
        x = x.reshape(self.stored_shape)
        return np.moveaxis(x, 0, self.axis) if self.axis is not None else x


class SessionContextCodec(Codec):
    """A codec whose streams name a session context by the integer parameter
    ``context_param`` (0: none, a self-contained mode), found in scope or in the registry
    ``context_registry`` (whose item type is the context class): the hooks above, from it.

    The context a codec instance codes against is :attr:`context` (None when the parameter
    is 0); naming one that is neither in scope nor registered is a ValueError."""

    has_session_context = True
    #: the parameter that names the context by its key
    context_param: ClassVar[str]
    #: the contexts registered in this process
    context_registry: ClassVar[ContextRegistry[Any]]

    @classmethod
    def reusable_for(cls, params: Mapping[str, Any]) -> bool:
        """A decoder naming no context (a self-contained mode) binds nothing but its
        parameters; one naming a context is built per stream (the scope may differ)."""
        return cls.reusable or not params.get(cls.context_param)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        key = self.params[self.context_param]
        try:
            self.context = self.context_registry.require(key) if key else None
        except BitstreamError as e:
            raise ValueError(str(e)) from None

    @classmethod
    def with_context(cls, context: Any, **params: Any) -> Any:
        """Register ``context`` (or its bytes) here and build the codec that names it."""
        return cls(**{cls.context_param: cls.context_registry.register(context)}, **params)

    def session_context(self) -> bytes | None:
        return None if self.context is None else self.context_registry.to_bytes(self.context)

    @classmethod
    def load_context(cls, data: bytes | bytearray | memoryview) -> Any:
        return cls.context_registry.parse(data)

    @classmethod
    def context_key(cls, context: object) -> int:
        reg = cls.context_registry
        if not isinstance(context, reg.item_type):
            raise TypeError(f"{cls.name}: not a {reg.item_type.__name__}: "
                            f"{type(context).__name__}")
        return reg.key_of(context)

    @classmethod
    def local_context(cls, digest: bytes) -> Any:
        return cls.context_registry.by_digest(digest)
