"""Hostile bitstreams: small streams that claim far more work than their bytes carry.

What a decoder's limits must survive (``tests/codecs/test_limits.py``,
``tests/runtime/test_bombs.py``, ``benchmarks/bombs.py``): for each built-in codec, streams
under 1 KB whose container header claims a given shape, with payloads that are

* ``relabeled``: a real stream of a small tensor, its header rewritten to the claimed shape;
* ``short``: a few bytes, far fewer than the shape needs (raw and byte-aligned codecs);
* valid for the claimed shape where the format allows it in a few bytes (``zeros``: an
  all-zero tensor, whose entropy-coded symbols cost nothing), so a decoder that accepts the
  shape does all the work it implies;
* codec specific: a zstd frame declaring a huge content size (``zstd_lying``) or made of run
  blocks (``zstd_rle``), a pcodec stream of one value (``pco_short``), a block of 2**20
  values for one scale (``wide_block``).

:func:`tokenwise_codes_bomb` is the one that needs a session context (an LLM client uploads
its own at OPEN): a context whose every table is as large as the format allows, and a stream
whose rows name ever other scale codes, each a table set to build.

Every stream is a well-formed container (magic, CRC, payload lengths), so the codec's own
parser is reached. Nothing here is needed to encode or decode.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from ._tokenwise_context import CODE_MAX, TokenwiseContext
from .base import Codec
from .bytes_io import put_varint
from .container import _codec_head, _tensor_head, peek
from .contexts import context_scope
from .registry import get

#: the most bytes a hostile stream may take
MAX_BOMB_BYTES = 1024
#: bytes of run-length block a zstd frame may produce from 4 bytes (the format's block limit)
_ZSTD_BLOCK = 1 << 17


def stream(codec: Codec, shape: Sequence[int], payload: bytes,
           dtype: torch.dtype = torch.float32) -> bytes:
    """A container of one ``dtype`` tensor claiming ``shape``, with ``payload`` as its bytes."""
    head = _codec_head(codec, 1)
    _tensor_head(head, dtype, tuple(int(d) for d in shape))
    put_varint(head, len(payload))
    body = bytes(head) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def payload_of(data: bytes) -> bytes:
    """The payload of a one-tensor stream."""
    header = peek(data)
    return bytes(data[header.header_bytes : header.header_bytes
                      + header.tensors[0].payload_bytes])


def _small(shape: Sequence[int]) -> torch.Tensor:
    """A small tensor of the claimed rank (each dim at most 3), smooth positive values."""
    dims = [max(1, min(int(d), 3)) for d in shape] or [1]
    n = math.prod(dims)
    return (torch.linspace(0.5, 2.0, n).reshape(dims) if n else torch.zeros(dims))


def _zstd_frame(content: int, blocks: int) -> bytes:
    """A zstd frame declaring ``content`` bytes, with ``blocks`` run blocks of zero bytes (the
    last one shorter, so they add up when ``blocks`` covers ``content``)."""
    out = bytearray(b"\x28\xb5\x2f\xfd")  # magic
    out.append(0xE0)  # 8-byte content size, single segment, no checksum, no dictionary
    out += struct.pack("<Q", content)
    left = content
    for i in range(blocks):
        size = min(left, _ZSTD_BLOCK) if left else _ZSTD_BLOCK
        left -= min(left, size)
        last = int(i == blocks - 1)
        out += (last | 1 << 1 | size << 3).to_bytes(3, "little") + b"\x00"  # RLE block of 0
    return bytes(out)


def bombs(name: str, shape: Sequence[int]) -> dict[str, bytes]:
    """Hostile streams of codec ``name`` claiming a float32 tensor of ``shape``, by kind;
    only those under :data:`MAX_BOMB_BYTES` (a kind may be absent for a shape)."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    codec = get(name)
    out: dict[str, bytes] = {}
    small = codec.encode(_small(shape))
    out["relabeled"] = stream(codec, shape, payload_of(small))
    out["short"] = stream(codec, shape, bytes(16))
    if name in ("rans", "tokenwise", "bottleneck", "slicer"):
        zero = codec.encode(torch.zeros(1, 4))
        zp = payload_of(zero)
        if name == "tokenwise":  # one f32 step per row, then the (shape-free) symbols
            rows = n // shape[-1] if shape and shape[-1] else 0
            zp = zp[:4] * rows + zp[4:] if 4 * rows < MAX_BOMB_BYTES else b""
        if zp:
            out["zeros"] = stream(codec, shape, zp)
    if name == "rans":
        out["pco_short"] = stream(get("rans", coder="pco"), shape, payload_of(
            get("rans", coder="pco").encode(torch.linspace(-1.0, 1.0, 4))))
    if name == "zstd":
        content = min(2 * n, (1 << 64) - 1)
        out["zstd_lying"] = stream(codec, shape, _zstd_frame(content, 1))
        blocks = max(1, -(-content // _ZSTD_BLOCK))
        out["zstd_rle"] = stream(codec, shape, _zstd_frame(content, min(blocks, 240)))
    if name == "blockwise8" and n < MAX_BOMB_BYTES:
        wide = get("blockwise8", block=1 << 20)
        out["wide_block"] = stream(wide, shape, bytes(4 * -(-n // (1 << 20)) + n))
    if name == "int8":
        per = get("int8", per_channel=True, axis=1)
        out["channels"] = stream(per, shape, bytes(16))
    return {k: v for k, v in out.items() if len(v) < MAX_BOMB_BYTES}


def tokenwise_codes_bomb(channels: int = 4096, payload_bytes: int = 960,
                         bytes_per_row: int = 8, spread: bool = True, seed: int = 0
                         ) -> tuple[bytes, bytes]:
    """(context bytes, stream): a ``tokenwise`` context whose every channel has the widest
    alphabet (K = 256: knots at +-60000) with all its mass on zero (symbols cost nothing) and
    equally likely scale codes; and a stream of ``payload_bytes`` of pseudo-random rANS words
    claiming ``payload_bytes // bytes_per_row`` rows (8: an LLM server's default minimum per
    token). Decoded, each row names a scale code drawn nearly at random among 128 (~7 bits
    apiece), each one a table set of 8 * 514 * ``channels`` bytes to build (16 MB, ~0.1 s for
    4096 channels). With ``spread=False`` the context makes code 127 all but certain: one
    build, then every row reads those tables (~4 ms a row for 4096 channels). The stream fails
    its final check: the work happens before that."""
    p16 = np.array([0, 1, 32767, 65534, 65535], np.float64)
    knots = np.tile([-60000.0, 0.0, 0.0, 0.0, 60000.0], (channels, 1))
    ctx = TokenwiseContext(1.0, 0.0, 0.0, p16 / 65535, np.zeros(channels, np.float32),
                           np.full(channels, 128, np.uint8), np.zeros(channels, np.float32),
                           knots, np.ones(CODE_MAX + 1, np.int64) if spread
                           else np.eye(CODE_MAX + 1, dtype=np.int64)[CODE_MAX] * 65535)
    data = ctx.to_bytes()
    ctx = TokenwiseContext.from_bytes(data)
    with context_scope({ctx.context_id: ctx}):
        codec = get("tokenwise", context=ctx.context_id)
    words = np.random.default_rng(seed).integers(1, 1 << 32, payload_bytes // 4, np.uint64)
    payload = words.astype("<u4").tobytes()
    return data, stream(codec, (payload_bytes // bytes_per_row, channels), payload)
