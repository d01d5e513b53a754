"""The switch of the codecs' compiled path (numba), and where numba keeps its cache.

:data:`ENABLED` (``SPLITCOMP_SLICER_JIT=0`` turns it off) selects the fused slicer decoder,
encoder and quantization (:mod:`._slicer_fused`, :mod:`._slicer_fused_enc`,
:func:`._slicer_quant.quantize_fast`) and the compiled rANS behind ``AnsWriter``/``AnsReader``
(:mod:`.entropy._ans_jit`). Each kernel computes exactly what its
numpy reference computes (same dtypes, same bytes on the wire); the numpy path stays the
reference and is what runs when numba is not installed (the torch-free edge install) or when
the variable is set to 0. Tests flip :data:`ENABLED` to compare the two.

numba is imported and the kernels compiled (or loaded from numba's on-disk cache) on first
use, not when :mod:`splitcomp.codecs` is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np

#: whether the compiled path is used: numba importable and not switched off by the env var
ENABLED = (
    os.environ.get("SPLITCOMP_SLICER_JIT", "1") != "0"
    and importlib.util.find_spec("numba") is not None
)
_KERNELS: ModuleType | None = None


def active() -> bool:
    """True when the compiled kernels are to be used (see :data:`ENABLED`); a numba that is
    present but does not import switches the compiled path off for good."""
    global ENABLED
    if ENABLED and _KERNELS is None:
        try:
            kernels()
        except ImportError:
            ENABLED = False
    return ENABLED


def kernels() -> ModuleType:
    """The compiled kernels (built on the first call)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build()
    return _KERNELS


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now, e.g. before timing or serving
    (nothing without numba or with the compiled path off): a round trip of a few small
    tensors through the slicer (one-piece grids: :func:`._slicer_fused_enc.encode_fast`;
    an outlier's magnitude blocks: the numpy quantizer and
    :func:`._slicer_fused_enc.encode_tail`), rans and self-contained tokenwise takes every
    kernel and the usual argument types."""
    from .rans import RansCodec  # here, not at import: these modules import this one
    from .slicer import SlicerCodec
    from .tokenwise import TokenwiseCodec

    if not active():
        return
    kernels()
    rng = np.random.default_rng(0)
    for shape, axis in (((1, 8, 6, 6), 1), ((1, 5, 48), -1), ((2, 3), 7)):
        x = rng.standard_normal(shape).astype(np.float32)
        spiky = x.copy()  # magnitude blocks: the numpy quantizer, then the compiled tail
        spiky.reshape(-1)[0] = 1e4
        for q in (0.3, 1.0):
            codec = SlicerCodec(quality=q, axis=axis)
            for sample in (x, np.maximum(x, 0), spiky):
                payload = codec.encode_array(sample)
                codec.decode_array(memoryview(payload), shape, _limits())
                codec.error_bound(sample)  # quantize_fast's kernels
        for other in (RansCodec(), RansCodec(bits=2), TokenwiseCodec()):
            for sample in (x, np.maximum(x, 0)):
                payload = other.encode_array(sample)
                other.decode_array(memoryview(payload), shape, _limits())


def _limits():
    from .errors import DecodeLimits

    return DecodeLimits()


def _numba_cache() -> None:
    """numba's on-disk cache goes where splitcomp's caches go (``$SPLITCOMP_CACHE`` or the
    XDG cache folder), not beside an installed package, in a folder per
    :func:`kernels_digest`; ``NUMBA_CACHE_DIR`` wins. (The rule is ``splitcomp.data.paths``';
    ``codecs`` may not import ``data``.)"""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    root = os.environ.get("SPLITCOMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "splitcomp")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(root, "numba", kernels_digest())


#: the modules whose source compiled kernels are made of: the kernels and the constants they
#: import (numba checks a cached kernel against its own file only, so a kernel inlining a
#: changed function of another file would load stale; a folder per digest cannot)
KERNEL_SOURCES = ("*_kernels.py", "entropy/*_kernels.py", "entropy/_ans_jit.py",
                  "_slicer_quant.py", "_slicer_values.py", "_slicer_mask.py")


def kernels_digest() -> str:
    """12 hex digits of the SHA-256 of the :data:`KERNEL_SOURCES` files' bytes."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted({p for pattern in KERNEL_SOURCES for p in here.glob(pattern)}):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _build() -> ModuleType:
    """numba imported (its cache folder set first) and the rANS kernels loaded: what every
    compiled codec path calls into."""
    from .entropy import _ans_jit

    return _ans_jit.kernels()
