"""The one bitstream container every codec writes (format version 1).

Layout: ``docs/bitstream.md`` (the container table at the top, "Decoding rules"). The CRC is
checked before anything is parsed; every count is checked against :class:`DecodeLimits`
before anything is allocated.

The core works on numpy arrays (:func:`pack_arrays`, :func:`unpack_arrays`), so an edge
device without torch writes the same bytes; :func:`pack` and :func:`unpack` are the torch
adapters around it, and only they import torch.

A codec that checks its own payload (``checks_payload``, the ``resilient`` codec) is written
in the *resilient framing* (magic ``SR``, compact ``SQ``; "Resilient streams" in
``docs/bitstream.md``): the same layout, but the trailing CRC covers only the header, so a bit
error in a payload costs what the codec's own checks say rather than the whole request.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _container_memo as memo
from . import compact as compact_module
from ._container_dtypes import (  # noqa: F401 - the container's API
    CODE_NAMES,
    FLOAT_CODES,
    NAME_CODES,
    dtype_code,
    numpy_dtype,
    torch_dtype,
)
from ._crc import crc32
from .base import Codec, Param, decode_params, encode_params
from .bytes_io import Reader, put_varint
from .contexts import context_scope
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits, require
from .registry import codec_class_by_id

if TYPE_CHECKING:
    import torch

MAGIC = b"SC"
FORMAT_VERSION = 1
CRC_BYTES = compact_module.CRC_BYTES
#: magic of a full stream whose CRC covers only the header (a ``checks_payload`` codec's)
RESILIENT_MAGIC = b"SR"
#: magic of a compact stream whose CRC covers only its prefix (magic and template id)
RESILIENT_COMPACT_MAGIC = b"SQ"


@dataclass(frozen=True)
class TensorInfo:
    code: int  #: the dtype's wire code (:data:`CODE_NAMES`)
    shape: tuple[int, ...]
    payload_bytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (imports torch; :attr:`dtype_name` does not)."""
        return torch_dtype(self.code)

    @property
    def dtype_name(self) -> str:
        return CODE_NAMES[self.code]

    @property
    def is_float(self) -> bool:
        return self.code in FLOAT_CODES


@dataclass(frozen=True)
class Header:
    """What the container says about a bitstream, without decoding any payload."""

    codec_id: int
    codec_name: str
    params: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    header_bytes: int
    total_bytes: int
    #: resilient framing (``SR``/``SQ``): the CRC covers the header only, the codec checks its
    #: payload, a raw (integer, bool) tensor's payload ends with its own CRC32
    resilient: bool = False


def _as_tensor_list(tensors: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    import torch

    if isinstance(tensors, torch.Tensor):
        return [tensors]
    out = list(tensors)
    for t in out:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected tensors, got {type(t).__name__}")
    return out


def checks_payload(cls: type[Codec]) -> bool:
    """Whether ``cls`` checks its own payloads (then its streams use the resilient framing)."""
    return bool(getattr(cls, "checks_payload", False))


def _nested_spec(cls: type[Codec], params: dict[str, Any]) -> tuple[Param, ...]:
    """The parameters that follow the declared ones for a codec wrapping another (the
    ``resilient`` codec: its inner codec's), by its ``nested_params_spec(params)``."""
    hook = getattr(cls, "nested_params_spec", None)
    if hook is None:
        return ()
    try:
        return tuple(hook(params))
    except (KeyError, TypeError, ValueError) as e:
        raise BitstreamError(f"bad parameters for {cls.name}: {e}") from None


#: codec heads written before, by (class, parameters, tensor count), and tensor heads, by
#: (dtype code, shape): each a function of these alone (bounded; cleared when full)
_HEADS: dict[tuple, bytes] = {}


def _codec_head(codec: Codec, count: int) -> bytearray:
    """Magic, version, codec id, parameters and tensor count: a new bytearray to extend."""
    key = (type(codec), tuple(codec.params.items()), count)
    head = _HEADS.get(key)
    if head is None:
        head = bytearray((*MAGIC, FORMAT_VERSION, codec.codec_id))
        head += encode_params((*codec.params_spec, *_nested_spec(type(codec), codec.params)),
                              codec.params)
        put_varint(head, count)
        head = _keep(key, head)
    return bytearray(head)


def _keep(key: tuple, head: bytearray) -> bytes:
    """``head`` kept in :data:`_HEADS` under ``key`` (cleared when full), as bytes."""
    if len(_HEADS) >= _REUSED_MAX:
        _HEADS.clear()
    _HEADS[key] = out = bytes(head)
    return out


def _tensor_head(head: bytearray, dtype: Any, shape: Sequence[int]) -> None:
    """Append a tensor's dtype code and shape (kept per both, as :data:`_HEADS`); ``dtype``:
    a wire code, or a dtype (torch, numpy or name)."""
    code = dtype if isinstance(dtype, int) else dtype_code(dtype)
    key = (code, *shape)
    part = _HEADS.get(key)
    if part is None:
        part = bytearray((code, len(shape)))
        for d in shape:
            put_varint(part, int(d))
        part = _keep(key, part)
    head += part


def template(codec: Codec, shape: Sequence[int], dtype: Any = "float32") -> bytes:
    """The compact-stream template of one ``dtype`` tensor (torch or numpy dtype, or its
    name) of ``shape`` coded by ``codec``: its full header without the payload length
    (:mod:`.compact`)."""
    code = dtype_code(dtype)
    head = _codec_head(codec, 1)
    _tensor_head(head, code, shape)
    return bytes(head)


def learn_template(scope: dict, data: bytes | memoryview,
                   limits: DecodeLimits = DEFAULT_LIMITS) -> bool:
    """A full one-tensor stream's template joins ``scope`` (a session's, see
    :func:`~.contexts.context_scope`): the session's later streams of that codec, parameters
    and shape may then be compact or session streams. True if it is new there; compact and
    session streams teach nothing. Raises ``BitstreamError`` as :func:`read_header`."""
    if bytes(data[:2]) not in (MAGIC, RESILIENT_MAGIC):
        return False
    with context_scope(scope):
        header, codec, _ = read_header(data, limits)
    if len(header.tensors) != 1:
        return False
    tpl = template(codec, header.tensors[0].shape, CODE_NAMES[header.tensors[0].code])
    key = compact_module.scope_key(compact_module.template_id(tpl))
    if key in scope:
        return False
    scope[key] = tpl
    return True


def pack(codec: Codec, tensors: torch.Tensor | Sequence[torch.Tensor],
         compact: bool = False) -> bytes:
    """Encode ``tensors`` with ``codec`` into one container bitstream. ``compact``: one tensor
    only, the header replaced by a template id (the template is registered here; the decoder
    must have registered it too, see :mod:`.compact`). The torch adapter of
    :func:`pack_arrays`: the same bytes for the same values."""
    import torch

    items = _as_tensor_list(tensors)
    if compact and len(items) != 1:
        raise ValueError(f"a compact stream carries one tensor, not {len(items)}")
    arrays: list[tuple[int, np.ndarray]] = []
    for t in items:
        t = t.detach()
        code = dtype_code(t.dtype)
        t = t.cpu().contiguous()
        arrays.append((code, t.to(torch.float32).numpy() if code in FLOAT_CODES and code != 1
                       else t.numpy()))  # float32 (1): ``to`` would return ``t``
    return _pack(codec, arrays, compact)


def pack_arrays(codec: Codec, arrays: np.ndarray | Sequence[np.ndarray],
                compact: bool = False) -> bytes:
    """:func:`pack` for numpy arrays (no torch): float16/32/64 arrays are coded by ``codec``,
    integer and bool arrays sent raw; the stream records each array's dtype."""
    items = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
    if compact and len(items) != 1:
        raise ValueError(f"a compact stream carries one tensor, not {len(items)}")
    out: list[tuple[int, np.ndarray]] = []
    for a in items:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"expected numpy arrays, got {type(a).__name__}")
        code = dtype_code(a.dtype)
        out.append((code, a.astype(np.float32, copy=False) if code in FLOAT_CODES else a))
    return _pack(codec, out, compact)


def _pack(codec: Codec, items: Sequence[tuple[int, np.ndarray]], compact: bool) -> bytes:
    """The container of ``(dtype code, array)`` items: float codes come as float32 arrays."""
    resilient = checks_payload(type(codec))
    head = _codec_head(codec, len(items))
    payloads: list[bytes] = []
    for code, arr in items:
        if code in FLOAT_CODES:
            payload = codec.encode_array(np.ascontiguousarray(arr))
        else:  # integer / bool tensors crossing a cut are sent raw, losslessly
            arr = np.ascontiguousarray(arr)
            payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            if resilient:  # nothing can conceal an integer: its own check
                payload += struct.pack("<I", crc32(payload))
        if compact:
            tid = compact_module.register_template(template(codec, arr.shape, CODE_NAMES[code]))
            if resilient:
                pre = RESILIENT_COMPACT_MAGIC + tid.to_bytes(3, "little")
                return pre + payload + struct.pack("<I", crc32(pre))
            body = compact_module.prefix(tid) + payload
            return body + struct.pack("<I", crc32(body))
        _tensor_head(head, code, arr.shape)
        put_varint(head, len(payload))
        payloads.append(payload)
    if resilient:
        head[: len(MAGIC)] = RESILIENT_MAGIC
        return bytes(head) + b"".join(payloads) + struct.pack("<I", crc32(head))
    body = bytes(head) + b"".join(payloads)
    return body + struct.pack("<I", crc32(body))


def read_header(data: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_LIMITS):
    """Validate magic, version, CRC and limits; return (Header, codec instance, payload offset)."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    n = len(view)
    if n > limits.max_bytes:
        raise BitstreamError(f"bitstream of {n} bytes exceeds limit {limits.max_bytes}")
    session = n > 0 and view[0] == compact_module.SESSION_MAGIC[0]
    if n < (compact_module.SESSION_PREFIX_BYTES if session else len(MAGIC) + 2) + CRC_BYTES:
        raise BitstreamError(f"truncated: {n} bytes")
    body_end = n - CRC_BYTES
    crc = int.from_bytes(view[body_end:], "little")
    hit = memo.lookup(view, body_end, limits)  # the last full header parsed (magic ``SC``)
    if hit is not None and crc32(view[:body_end]) == crc:
        return hit
    if session:  # its template implied, and checked by the CRC
        tpl = compact_module.session_template(view, body_end, crc)
        return _read_compact(view, body_end, limits, tpl, compact_module.SESSION_PREFIX_BYTES)
    magic = bytes(view[:2])
    if magic in (RESILIENT_MAGIC, RESILIENT_COMPACT_MAGIC):
        return _read_resilient(view, magic, crc, limits)
    require(magic in (MAGIC, compact_module.COMPACT_MAGIC),
            "bad magic: not a splitcomp bitstream")
    require(crc32(view[:body_end]) == crc, "CRC mismatch: bitstream corrupted")
    if magic == compact_module.COMPACT_MAGIC:
        return _read_compact(view, body_end, limits)
    hit = compact_module.parsed_stream(view, body_end, limits)  # a header parsed before
    return hit or _read_full(Reader(view, 2, body_end), limits, None, n, remember=True)


def _read_resilient(view: memoryview, magic: bytes, crc: int, limits: DecodeLimits):
    """``SQ``: the CRC of the 5-byte prefix is checked first, then the template is read.
    ``SR``: the header is parsed (every bound checked as for ``SC``), then its CRC checked,
    before any payload is touched. Either way the codec must check its own payload."""
    n = len(view)
    body_end = n - CRC_BYTES
    if magic == RESILIENT_COMPACT_MAGIC:
        pre = compact_module.PREFIX_BYTES
        require(body_end >= pre and crc32(view[:pre]) == crc,
                "header CRC mismatch: bitstream corrupted")
        header, codec, pos = _read_compact(view, body_end, limits)
    else:
        header, codec, pos = _read_full(Reader(view, 2, body_end), limits, None, n)
        require(crc32(view[:pos]) == crc, "header CRC mismatch: bitstream corrupted")
    require(checks_payload(type(codec)),
            f"codec {header.codec_name!r} does not check its payload: no resilient framing")
    return replace(header, resilient=True), codec, pos


def _read_compact(view: memoryview, body_end: int, limits: DecodeLimits,
                  tpl: bytes | None = None, pre: int = compact_module.PREFIX_BYTES):
    """A compact stream (``tpl``: a session stream's template, found): its template's
    header, the rest of the body (after ``pre`` bytes) is the payload."""
    require(body_end >= pre, "truncated compact stream")
    if tpl is None:
        tpl = bytes(compact_module.find_template(int.from_bytes(view[2:pre], "little")))
    hit = compact_module.parsed_header(tpl, limits, pre, len(view))
    if hit is not None:
        return *hit, pre
    header, codec, _ = _read_full(Reader(memoryview(tpl), 2, len(tpl)), limits,
                                  body_end - pre, len(view), pre=pre)
    compact_module.remember_parsed(tpl, limits, codec, header)
    return header, codec, pre


#: decoders reused per (class, parameters), for codecs that are values of their parameters
_REUSED: dict[tuple, Codec] = {}
_REUSED_MAX = 256


def _codec(cls: type[Codec], params: dict) -> Codec:
    """The decoder of a stream's parameters: built, or a reusable one built before (saves
    ~7 us a stream; the cache is bounded, a stream cycling through parameters refills it)."""
    key = (cls, tuple(params.items())) if cls.reusable_for(params) else None
    codec = _REUSED.get(key) if key is not None else None
    if codec is None:
        try:
            codec = cls(**params)
        except (TypeError, ValueError) as e:
            raise BitstreamError(f"bad parameters for {cls.name}: {e}") from None
        if key is not None:
            if len(_REUSED) >= _REUSED_MAX:
                _REUSED.clear()
            _REUSED[key] = codec
    return codec


def _read_full(r: Reader, limits: DecodeLimits, implied_payload: int | None, total: int,
               remember: bool = False, pre: int = compact_module.PREFIX_BYTES):
    """The header after the magic; ``implied_payload``: a template's one tensor has no payload
    length field, its payload is the rest of the stream (that many bytes, after ``pre``
    bytes of a compact stream's prefix). ``remember``: keep
    a one-tensor header's parse (a full stream's, ``SC``) for later streams."""
    version = r.u8()
    require(version == FORMAT_VERSION, f"unsupported format version {version}")
    codec_id = r.u8()
    cls = codec_class_by_id(codec_id)
    require(cls is not None, f"unknown codec id {codec_id}")
    params = decode_params(cls.params_spec, r)
    params.update(decode_params(_nested_spec(cls, params), r))
    codec = _codec(cls, params)
    n_tensors = r.varint()
    require(n_tensors <= limits.max_tensors, f"{n_tensors} tensors exceeds limit")
    infos = []
    total_elements = 0
    total_payload = 0
    for _ in range(n_tensors):
        code = r.u8()
        require(code in CODE_NAMES, f"unknown dtype code {code}")
        ndim = r.u8()
        require(ndim <= limits.max_ndim, f"ndim {ndim} exceeds limit")
        shape = tuple(r.varint() for _ in range(ndim))
        numel = math.prod(shape)
        total_elements += numel
        limits.check_elements(total_elements, "total elements")
        if implied_payload is not None:
            require(n_tensors == 1, "a compact template holds one tensor")
            infos.append(TensorInfo(code, shape, implied_payload))
            require(r.remaining() == 0, "compact template: trailing bytes")
            return Header(codec_id, cls.name, codec.params, tuple(infos), pre, total), codec, pre
        size_at = r.pos
        size = r.varint()
        total_payload += size
        require(total_payload <= r.remaining(), "truncated: payloads exceed bitstream")
        infos.append(TensorInfo(code, shape, size))
    require(implied_payload is None, "a compact template holds one tensor")
    require(total_payload == r.remaining(), "payload lengths do not match bitstream size")
    header = Header(codec_id, cls.name, codec.params, tuple(infos), r.pos, total)
    if remember and n_tensors == 1 and cls.reusable_for(codec.params):
        compact_module.remember_parsed(head := bytes(r.buf[:size_at]), limits, codec, header)
        memo.remember(head, limits, codec, header)
    return header, codec, r.pos


def peek(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    contexts: Mapping[int, object] | None = None,
) -> Header:
    """Read and check a bitstream's header without decoding payloads (for runtimes, tools);
    ``contexts`` as in :func:`unpack` (a codec checks the context its parameters name)."""
    if contexts is None:
        return read_header(data, limits)[0]
    with context_scope(contexts):
        return read_header(data, limits)[0]


def unpack(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    expect_codec: int | None = None,
    check: Callable[[Header], object] | None = None,
    contexts: Mapping[int, object] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Decode any container bitstream into tensors of the original shapes and dtypes.

    ``check`` sees the validated header before any payload is decoded (a runtime's codec
    allow-list, shape checks) and may raise; the header is read and its CRC checked once.
    ``contexts`` (key -> context from :meth:`Codec.load_context`) are the session contexts
    in scope while this stream decodes (:func:`~splitcomp.codecs.contexts.context_scope`):
    the codec finds the one its stream names there before any registered in this process.
    The torch adapter of :func:`unpack_arrays`.
    """
    import torch

    out = _scoped(data, limits, expect_codec, check, contexts)
    return tuple([torch.from_numpy(a).to(torch_dtype(c)) if c in FLOAT_CODES and c != 1
                  else torch.from_numpy(a) for c, a in out])  # float32 (1): no ``to`` needed


def unpack_arrays(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    expect_codec: int | None = None,
    check: Callable[[Header], object] | None = None,
    contexts: Mapping[int, object] | None = None,
) -> tuple[np.ndarray, ...]:
    """:func:`unpack` into numpy arrays (no torch): the values torch would hold, in the
    original dtypes (bfloat16 tensors as float32: numpy has no bfloat16)."""
    out = _scoped(data, limits, expect_codec, check, contexts)
    return tuple(a.astype(numpy_dtype(c), copy=False) for c, a in out)


def _scoped(data, limits, expect_codec, check, contexts) -> list[tuple[int, np.ndarray]]:
    if contexts is None:
        return _unpack(data, limits, expect_codec, check)
    with context_scope(contexts):
        return _unpack(data, limits, expect_codec, check)


def _unpack(data, limits, expect_codec, check) -> list[tuple[int, np.ndarray]]:
    """``(dtype code, array)`` per tensor: float tensors as float32, the others raw."""
    header, codec, pos = read_header(data, limits)
    if check is not None:
        check(header)
    if expect_codec is not None and header.codec_id != expect_codec:
        raise BitstreamError(f"bitstream was made by {header.codec_name!r}")
    return decode_payloads(data, header, codec, pos, limits)


def decode_payloads(data, header: Header, codec: Codec, pos: int, limits: DecodeLimits,
                    raw: bool = False) -> list[tuple[int, Any]]:
    """The tensors of a stream whose header :func:`read_header` returned. ``raw``: a float
    tensor whose codec has a raw form comes as its :class:`~.base.RawArray`."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    out: list[tuple[int, Any]] = []
    for info in header.tensors:
        payload = view[pos : pos + info.payload_bytes]
        pos += info.payload_bytes
        if info.code in FLOAT_CODES:
            try:
                arr = codec.decode_raw(payload, info.shape, limits) if raw else None
                if arr is not None:
                    out.append((info.code, arr))
                    continue
                arr = codec.decode_array(payload, info.shape, limits)
            except BitstreamError:
                raise
            except (ValueError, IndexError, OverflowError, RuntimeError, TypeError) as e:
                raise BitstreamError(f"{header.codec_name}: corrupt payload ({e})") from None
            if type(arr) is not np.ndarray or arr.dtype != np.float32:
                arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != info.shape:
                raise BitstreamError(f"{header.codec_name}: decoded shape mismatch")
            flags = arr.flags
            if not (flags.c_contiguous and flags.writeable):
                arr = arr.copy(order="C")
        else:
            np_dtype = numpy_dtype(info.code).newbyteorder("<")
            size = info.numel * np_dtype.itemsize
            crc_bytes = CRC_BYTES if header.resilient else 0
            require(info.payload_bytes == size + crc_bytes, "raw tensor payload size mismatch")
            if crc_bytes:
                (want,) = struct.unpack("<I", payload[size:])
                require(crc32(payload[:size]) == want, "raw tensor CRC mismatch")
            arr = np.frombuffer(payload[:size], dtype=np_dtype).reshape(info.shape).copy()
            arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        out.append((info.code, arr))
    return out
