"""constriction's rANS stack, compiled with numba: the same words, decoded or written in one call.

constriction (``DefaultAnsCoder``: 32-bit words, 64-bit state, 24-bit probabilities) is the
reference and what runs without numba. Calling it costs 3-5 us of Python and pyo3 work per
symbol stream, and SLICER codes ~30 streams per tensor; fused decoders (``_slicer_fused``)
call these kernels instead, inside one compiled pass. What must match constriction bit for
bit, and is tested against it (``tests/codecs/test_ans_jit.py``):

* the model: ``Categorical(freqs, perfect=False)`` quantizes float64 frequencies as
  ``cdf[i] = floor(F_i * (2**24 - n) / F_n) + i`` (``F_i``: the sequential float sum of the
  first ``i`` frequencies), so every symbol keeps a non-zero probability;
* a symbol: encode ``x -> (x // p) << 24 | (cdf[s] + x % p)`` after flushing the low word when
  ``x >> 40 >= p``; decode the inverse, refilling one word when ``x < 2**32``;
* the stream: words in push order, then the state's low and high words (zero high word
  dropped); a reader pops from the end, and a stream whose last word is 0 is invalid.

The encoder divides by multiplying (``_ans_kernels.write_rcp``: ryg_rans' reciprocals, with a
remainder check where they are one too high): the same quotients, so the same words.

A decoder state is a uint64 array ``[state, words left]``; kernels return False (or -1) where
constriction would raise, never read out of bounds, and never allocate from stream contents.
"""

from __future__ import annotations

from types import ModuleType

PRECISION = 24
_KERNELS: ModuleType | None = None


def kernels() -> ModuleType:
    """The compiled kernels (built, or loaded from numba's cache, on the first call; the
    caller has checked that numba imports)."""
    global _KERNELS
    if _KERNELS is None:
        from .._slicer_jit import _numba_cache

        _numba_cache()
        _KERNELS = _build()
    return _KERNELS


def _build() -> ModuleType:
    from . import _ans_kernels

    return _ans_kernels
