"""The one bitstream container every codec writes (format version 1).

Layout: ``docs/bitstream.md`` (the container table at the top, "Decoding rules"). The CRC is
checked before anything is parsed; every count is checked against :class:`DecodeLimits`
before anything is allocated.

A codec that checks its own payload (``checks_payload``, the ``resilient`` codec) is written
in the *resilient framing* (magic ``SR``, compact ``SQ``; "Resilient streams" in
``docs/bitstream.md``): the same layout, but the trailing CRC covers only the header, so a bit
error in a payload costs what the codec's own checks say rather than the whole request.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import compact as compact_module
from .bytes_io import Reader, put_varint, unzigzag, zigzag
from .contexts import context_scope
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits, require
from .registry import codec_class_by_id

if TYPE_CHECKING:
    from .base import Codec, Param

MAGIC = b"SC"
FORMAT_VERSION = 1
CRC_BYTES = 4
#: magic of a full stream whose CRC covers only the header (a ``checks_payload`` codec's)
RESILIENT_MAGIC = b"SR"
#: magic of a compact stream whose CRC covers only its prefix (magic and template id)
RESILIENT_COMPACT_MAGIC = b"SQ"

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.uint8: 10,
    torch.int8: 11,
    torch.int16: 12,
    torch.int32: 13,
    torch.int64: 14,
    torch.bool: 15,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    payload_bytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


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


def encode_params(spec: Sequence[Param], params: dict[str, Any]) -> bytes:
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


def _codec_head(codec: Codec, count: int) -> bytearray:
    head = bytearray(MAGIC)
    head.append(FORMAT_VERSION)
    head.append(codec.codec_id)
    spec = (*codec.params_spec, *_nested_spec(type(codec), codec.params))
    head += encode_params(spec, codec.params)
    put_varint(head, count)
    return head


def _tensor_head(head: bytearray, dtype: torch.dtype, shape: Sequence[int]) -> None:
    head.append(DTYPE_CODES[dtype])
    head.append(len(shape))
    for d in shape:
        put_varint(head, int(d))


def template(codec: Codec, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> bytes:
    """The compact-stream template of one ``dtype`` tensor of ``shape`` coded by ``codec``:
    its full header without the payload length (:mod:`.compact`)."""
    if dtype not in DTYPE_CODES:
        raise TypeError(f"unsupported dtype {dtype}")
    head = _codec_head(codec, 1)
    _tensor_head(head, dtype, shape)
    return bytes(head)


def pack(codec: Codec, tensors: torch.Tensor | Sequence[torch.Tensor],
         compact: bool = False) -> bytes:
    """Encode ``tensors`` with ``codec`` into one container bitstream. ``compact``: one tensor
    only, the header replaced by a template id (the template is registered here; the decoder
    must have registered it too, see :mod:`.compact`)."""
    items = _as_tensor_list(tensors)
    if compact and len(items) != 1:
        raise ValueError(f"a compact stream carries one tensor, not {len(items)}")
    resilient = checks_payload(type(codec))
    head = _codec_head(codec, len(items))
    payloads: list[bytes] = []
    for t in items:
        t = t.detach()
        if t.dtype not in DTYPE_CODES:
            raise TypeError(f"unsupported dtype {t.dtype}")
        t = t.cpu().contiguous()
        if t.dtype in FLOAT_DTYPES:
            arr = t.to(torch.float32).numpy()
            payload = codec.encode_array(np.ascontiguousarray(arr))
        else:  # integer / bool tensors crossing a cut are sent raw, losslessly
            payload = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
            if resilient:  # nothing can conceal an integer: its own check
                payload += struct.pack("<I", zlib.crc32(payload))
        if compact:
            tid = compact_module.register_template(template(codec, t.shape, t.dtype))
            if resilient:
                pre = RESILIENT_COMPACT_MAGIC + tid.to_bytes(3, "little")
                return pre + payload + struct.pack("<I", zlib.crc32(pre))
            body = compact_module.prefix(tid) + payload
            return body + struct.pack("<I", zlib.crc32(body))
        _tensor_head(head, t.dtype, t.shape)
        put_varint(head, len(payload))
        payloads.append(payload)
    if resilient:
        head[: len(MAGIC)] = RESILIENT_MAGIC
        return bytes(head) + b"".join(payloads) + struct.pack("<I", zlib.crc32(head))
    body = bytes(head) + b"".join(payloads)
    return body + struct.pack("<I", zlib.crc32(body))


def read_header(data: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_LIMITS):
    """Validate magic, version, CRC and limits; return (Header, codec instance, payload offset)."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    n = len(view)
    require(n <= limits.max_bytes, f"bitstream of {n} bytes exceeds limit {limits.max_bytes}")
    require(n >= len(MAGIC) + 2 + CRC_BYTES, f"truncated: {n} bytes")
    magic = bytes(view[:2])
    body_end = n - CRC_BYTES
    (crc,) = struct.unpack("<I", view[body_end:])
    if magic in (RESILIENT_MAGIC, RESILIENT_COMPACT_MAGIC):
        return _read_resilient(view, magic, crc, limits)
    require(magic in (MAGIC, compact_module.COMPACT_MAGIC),
            "bad magic: not a splitcomp bitstream")
    require(zlib.crc32(view[:body_end]) == crc, "CRC mismatch: bitstream corrupted")
    if magic == compact_module.COMPACT_MAGIC:
        return _read_compact(view, body_end, limits)
    r = Reader(view, 2, body_end)
    return _read_full(r, limits, None, n)


def _read_resilient(view: memoryview, magic: bytes, crc: int, limits: DecodeLimits):
    """``SQ``: the CRC of the 5-byte prefix is checked first, then the template is read.
    ``SR``: the header is parsed (every bound checked as for ``SC``), then its CRC checked,
    before any payload is touched. Either way the codec must check its own payload."""
    n = len(view)
    body_end = n - CRC_BYTES
    if magic == RESILIENT_COMPACT_MAGIC:
        pre = compact_module.PREFIX_BYTES
        require(body_end >= pre and zlib.crc32(view[:pre]) == crc,
                "header CRC mismatch: bitstream corrupted")
        header, codec, pos = _read_compact(view, body_end, limits)
    else:
        header, codec, pos = _read_full(Reader(view, 2, body_end), limits, None, n)
        require(zlib.crc32(view[:pos]) == crc, "header CRC mismatch: bitstream corrupted")
    require(checks_payload(type(codec)),
            f"codec {header.codec_name!r} does not check its payload: no resilient framing")
    return replace(header, resilient=True), codec, pos


def _read_compact(view: memoryview, body_end: int, limits: DecodeLimits):
    """A compact stream: its template's header, the rest of the body is the payload."""
    pre = compact_module.PREFIX_BYTES
    require(body_end >= pre, "truncated compact stream")
    tid = int.from_bytes(view[2:pre], "little")
    tpl = compact_module.find_template(tid)
    header, codec, _ = _read_full(Reader(memoryview(tpl), 2, len(tpl)), limits,
                                  body_end - pre, len(view))
    return header, codec, pre


def _read_full(r: Reader, limits: DecodeLimits, implied_payload: int | None, total: int):
    """The header after the magic; ``implied_payload``: a template's one tensor has no
    payload length field, its payload is the rest of the stream (that many bytes)."""
    version = r.u8()
    require(version == FORMAT_VERSION, f"unsupported format version {version}")
    codec_id = r.u8()
    cls = codec_class_by_id(codec_id)
    require(cls is not None, f"unknown codec id {codec_id}")
    params = decode_params(cls.params_spec, r)
    params.update(decode_params(_nested_spec(cls, params), r))
    try:
        codec = cls(**params)
    except (TypeError, ValueError) as e:
        raise BitstreamError(f"bad parameters for {cls.name}: {e}") from None
    n_tensors = r.varint()
    require(n_tensors <= limits.max_tensors, f"{n_tensors} tensors exceeds limit")
    infos = []
    total_elements = 0
    total_payload = 0
    for _ in range(n_tensors):
        code = r.u8()
        require(code in CODE_DTYPES, f"unknown dtype code {code}")
        ndim = r.u8()
        require(ndim <= limits.max_ndim, f"ndim {ndim} exceeds limit")
        shape = tuple(r.varint() for _ in range(ndim))
        numel = math.prod(shape)
        total_elements += numel
        limits.check_elements(total_elements, "total elements")
        if implied_payload is not None:
            require(n_tensors == 1, "a compact template holds one tensor")
            infos.append(TensorInfo(CODE_DTYPES[code], shape, implied_payload))
            require(r.remaining() == 0, "compact template: trailing bytes")
            header = Header(codec_id, cls.name, codec.params, tuple(infos),
                            compact_module.PREFIX_BYTES, total)
            return header, codec, compact_module.PREFIX_BYTES
        size = r.varint()
        total_payload += size
        require(total_payload <= r.remaining(), "truncated: payloads exceed bitstream")
        infos.append(TensorInfo(CODE_DTYPES[code], shape, size))
    require(implied_payload is None, "a compact template holds one tensor")
    require(total_payload == r.remaining(), "payload lengths do not match bitstream size")
    header = Header(codec_id, cls.name, codec.params, tuple(infos), r.pos, total)
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
    """
    if contexts is None:
        return _unpack(data, limits, expect_codec, check)
    with context_scope(contexts):
        return _unpack(data, limits, expect_codec, check)


def _unpack(data, limits, expect_codec, check) -> tuple[torch.Tensor, ...]:
    header, codec, pos = read_header(data, limits)
    if check is not None:
        check(header)
    if expect_codec is not None:
        require(header.codec_id == expect_codec, f"bitstream was made by {header.codec_name!r}")
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    out = []
    for info in header.tensors:
        payload = view[pos : pos + info.payload_bytes]
        pos += info.payload_bytes
        if info.dtype in FLOAT_DTYPES:
            try:
                arr = codec.decode_array(payload, info.shape, limits)
            except BitstreamError:
                raise
            except (ValueError, IndexError, OverflowError, RuntimeError, TypeError) as e:
                raise BitstreamError(f"{header.codec_name}: corrupt payload ({e})") from None
            arr = np.asarray(arr, dtype=np.float32)
            require(arr.shape == info.shape, f"{header.codec_name}: decoded shape mismatch")
            if not (arr.flags.c_contiguous and arr.flags.writeable):
                arr = arr.copy(order="C")
            t = torch.from_numpy(arr).to(info.dtype)
        else:
            np_dtype = torch.empty(0, dtype=info.dtype).numpy().dtype.newbyteorder("<")
            size = info.numel * np_dtype.itemsize
            crc_bytes = CRC_BYTES if header.resilient else 0
            require(info.payload_bytes == size + crc_bytes, "raw tensor payload size mismatch")
            if crc_bytes:
                (want,) = struct.unpack("<I", payload[size:])
                require(zlib.crc32(payload[:size]) == want, "raw tensor CRC mismatch")
            arr = np.frombuffer(payload[:size], dtype=np_dtype).reshape(info.shape).copy()
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=False))
        out.append(t)
    return tuple(out)
