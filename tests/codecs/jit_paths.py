"""The codecs' compiled path switched for a block: how the equal-paths tests run one call on
the numpy reference and on the compiled kernels."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from splitcomp.codecs import _slicer_jit


@contextmanager
def jit_path(compiled: bool) -> Iterator[None]:
    """``_slicer_jit.ENABLED`` set to ``compiled`` inside the block, restored after."""
    old = _slicer_jit.ENABLED
    _slicer_jit.ENABLED = compiled
    try:
        yield
    finally:
        _slicer_jit.ENABLED = old
