"""Typed errors and allocation limits shared by every decoder."""

from __future__ import annotations

from dataclasses import dataclass


class BitstreamError(ValueError):
    """A bitstream is truncated, corrupt, hostile or exceeds the decode limits."""


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked *before* any allocation a bitstream asks for.

    A header can claim any shape; these limits make a hostile stream fail fast instead of
    exhausting memory. Defaults fit a large vision IF batch (1 GiB of fp32).
    """

    max_elements: int = 1 << 28
    max_tensors: int = 64
    max_ndim: int = 8
    max_bytes: int = 1 << 30

    def check_elements(self, n: int, what: str = "elements") -> None:
        if n < 0 or n > self.max_elements:
            raise BitstreamError(f"{what}: {n} exceeds limit {self.max_elements}")


DEFAULT_LIMITS = DecodeLimits()


def require(cond: bool, msg: str) -> None:
    """Raise :class:`BitstreamError` with ``msg`` unless ``cond`` holds."""
    if not cond:
        raise BitstreamError(msg)


def native_error(e: BaseException, message: str) -> BitstreamError:
    """A :class:`BitstreamError` for what a native decoder (constriction, pcodec) raised on
    corrupt data: an exception, or a pyo3 ``PanicException`` (a ``BaseException``). Anything
    else (``KeyboardInterrupt``, ``SystemExit``) is re-raised as it is."""
    if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
        raise e
    return BitstreamError(message)
