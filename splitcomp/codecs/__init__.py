"""Intermediate-feature codecs behind one registry and one bitstream format: training-free ones,
and ``bottleneck``, which codes a learned bottleneck's latent with trained tables.

    >>> from splitcomp import codecs
    >>> codecs.available()
    >>> c = codecs.get("slicer", quality=0.5)
    >>> data = c.encode(features)          # bytes: self-describing, CRC-protected
    >>> (x_hat,) = codecs.decode(data)     # no side channel needed

A new codec is one module with a ``@register_codec`` class, plus one line in ``_BUILTIN``.
Third-party codecs register through the ``splitcomp.codecs`` entry-point group.

A codec that codes against a per-session context (``Codec.has_session_context``) takes it
from ``decode(data, contexts={key: context})`` (or an enclosing :func:`context_scope`) before
any registered in this process; see the hooks on :class:`Codec`.

``resilient`` wraps another codec for links with bit errors: independently checked slices,
concealed by :func:`splitcomp.codecs.resilient.decode_resilient`; the bit-flipping channel is
:func:`splitcomp.codecs.channel_errors.flip_bits`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ._crc import crc32
from ._slicer_jit import warm_up
from .base import Codec, Param, RawArray
from .container import FORMAT_VERSION, Header, pack, peek, unpack
from .contexts import context_scope
from .errors import DEFAULT_LIMITS, BitstreamError, DecodeLimits
from .registry import available, codec_class, get, register_codec

decode = unpack

_BUILTIN = ("floats", "int8", "blockwise8", "zstd", "rans", "slicer", "tokenwise",
            "bottleneck", "resilient")

for _mod in _BUILTIN:
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # a codec still being written must not break the others
        if _e.name != f"{__name__}.{_mod}":
            raise

for _ep in entry_points(group="splitcomp.codecs"):
    _ep.load()

from .batch import BatchItem, decode_batch  # noqa: E402 - after the codecs it conceals

__all__ = [
    "BatchItem",
    "BitstreamError",
    "Codec",
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "FORMAT_VERSION",
    "Header",
    "Param",
    "RawArray",
    "available",
    "codec_class",
    "context_scope",
    "crc32",
    "decode",
    "decode_batch",
    "get",
    "pack",
    "peek",
    "register_codec",
    "unpack",
    "warm_up",
]
