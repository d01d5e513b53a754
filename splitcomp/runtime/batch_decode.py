"""Decode a deployment's whole batch of bitstreams in one call, dequantizing on its device.

:func:`splitcomp.codecs.decode_batch` checks every header first (codec allow-list, shapes,
limits), then decodes the payloads, in a small thread pool when the batch is large enough (a
decoder that releases the GIL, zstd's, runs on several cores). Codecs with a raw form
(``fp32``, ``fp16``, ``int8``, ``blockwise8``: :class:`~splitcomp.codecs.RawArray`) stop
before dequantization; their values are stacked across requests, copied to the tail's device
once per layout and dequantized there by :func:`dequantize` in torch (the same float32
operations as the codec's numpy path: equal bit for bit). Every other float tensor decodes to
float32 on the CPU and is moved to the device as it is.

Errors stay per request, typed as :meth:`Deployment.decode` types them: a broken stream is
``BAD_BITSTREAM``, a header the deployment refuses keeps its own error, a decoder bug is
``INTERNAL``; the others decode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import codecs as _codecs
from ..codecs import BitstreamError, DecodeLimits, Header, RawArray
from ..codecs.container import FLOAT_CODES, torch_dtype
from .device import to_device
from .errors import RequestError
from .protocol import ErrorCode

Inputs = tuple[torch.Tensor, ...]
#: fewest streams in a batch before the payloads are split across the pool
POOL_MIN_STREAMS = 4


@dataclass
class DecodedBatch:
    """Per request: its tensors (on the device) or its error; and the batch's figures."""

    inputs: list[Inputs | None]
    errors: list[RequestError | None]
    concealed: int = 0  #: resilient slices concealed in the batch
    pool_cpu_s: float = 0.0  #: CPU spent decoding in the pool's threads (not the caller's)


def request_error(e: BaseException) -> RequestError:
    """The typed error of a stream that failed to decode (as :meth:`Deployment.decode`)."""
    if isinstance(e, RequestError):
        return e
    if isinstance(e, BitstreamError):
        return RequestError(ErrorCode.BAD_BITSTREAM, str(e))
    return RequestError(ErrorCode.INTERNAL, f"decode failed: {e!r}"[:300])


def dequantize(raws: Sequence[RawArray], device: torch.device) -> list[torch.Tensor]:
    """float32 tensors on ``device`` of ``raws`` (one layout: same dtype, group, shapes),
    stacked and dequantized in one pass: ``(values - zero) * scale`` per group, as
    :meth:`RawArray.dequantize` does in numpy."""
    first = raws[0]
    n = first.values.size
    values = torch.from_numpy(np.stack([r.values for r in raws]))
    side = [None if getattr(first, k) is None else
            torch.from_numpy(np.stack([getattr(r, k) for r in raws])) for k in ("zero", "scale")]
    values, zero, scale = to_device((values, *side), device)
    x = values.to(torch.float32)  # the stacked copy is ours: dequantized in place
    if zero is not None or scale is not None:
        g = max(first.group, 1)
        groups = -(-n // g)
        if groups * g != n:
            x = F.pad(x, (0, groups * g - n))
        blocks = x.view(len(raws), groups, g)
        if zero is not None:
            blocks -= zero[:, :groups, None]
        if scale is not None:
            blocks *= scale[:, :groups, None]
        x = x[:, :n]
    rows = x.reshape(len(raws), *first.stored_shape).unbind(0)
    if first.axis is None:
        return list(rows)
    return [t.movedim(0, first.axis).contiguous() for t in rows]


def _once_per_header(check: Callable[[Header], object] | None) -> Callable | None:
    """``check`` run once per distinct header object of a batch (the codecs' batch decode
    shares one among streams with the same header bytes): its outcome, error or not, is the
    same for all of them."""
    if check is None:
        return None
    outcome: dict[int, Exception | None] = {}

    def checked(header: Header) -> None:
        key = id(header)
        if key not in outcome:
            try:
                check(header)
                outcome[key] = None
            except Exception as e:  # noqa: BLE001 - raised again for each stream
                outcome[key] = e
        if outcome[key] is not None:
            raise outcome[key]

    return checked


def _layout(raw: RawArray) -> tuple:
    """What raws must share to be stacked: values' dtype and shape, sides, groups, axis."""
    z, s = raw.zero, raw.scale
    return (raw.values.dtype, raw.stored_shape, raw.group, raw.axis,
            None if z is None else len(z), None if s is None else len(s))


class BatchDecoder:
    """A deployment's batch decoder: tensors on ``device``, payloads in a pool of ``threads``
    (0: in the calling thread). One :meth:`decode` at a time (a deployment's worker)."""

    def __init__(self, device: torch.device, threads: int = 0) -> None:
        self.device = device
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def decode(self, bitstreams: Sequence[bytes | memoryview], limits: DecodeLimits,
               check: Callable[[Header], object] | None = None) -> DecodedBatch:
        """Decode a batch: per request its tensors or its error (``check`` sees each header
        first, as in :func:`~splitcomp.codecs.decode_batch`); never raises for a request."""
        pool = None
        if self.threads > 0 and len(bitstreams) >= POOL_MIN_STREAMS:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, "splitcomp-decode")
            pool = self._pool
        items = _codecs.decode_batch(bitstreams, limits, check=_once_per_header(check),
                                     raw=True, conceal=True, executor=pool,
                                     chunks=self.threads + 1)
        me = threading.get_ident()
        out = DecodedBatch([None] * len(items), [None] * len(items),
                           concealed=sum(i.concealed for i in items),
                           pool_cpu_s=sum(i.cpu_s for i in items if i.thread not in (0, me)))
        tensors: list[list[Any] | None] = [None] * len(items)
        layouts: dict[tuple, list[tuple[int, int]]] = {}
        for k, item in enumerate(items):
            if item.error is not None or item.parts is None:
                out.errors[k] = request_error(item.error or RuntimeError("not decoded"))
                continue
            row: list[Any] = []
            for j, (code, arr) in enumerate(item.parts):
                if isinstance(arr, RawArray):
                    layouts.setdefault((code, _layout(arr)), []).append((k, j))
                    row.append(None)
                else:
                    t = torch.from_numpy(arr)
                    row.append(t.to(torch_dtype(code)) if code in FLOAT_CODES else t)
            tensors[k] = row
        for (code, _), where in layouts.items():
            try:
                deq = dequantize([items[k].parts[j][1] for k, j in where], self.device)
            except Exception as e:  # noqa: BLE001 - e.g. the device out of memory
                for k, _j in where:
                    out.errors[k] = RequestError(ErrorCode.INTERNAL,
                                                 f"dequantize failed: {e!r}"[:300])
                continue
            dtype = torch_dtype(code)
            for (k, j), t in zip(where, deq, strict=True):
                tensors[k][j] = t if dtype == torch.float32 else t.to(dtype)
        for k, row in enumerate(tensors):
            if row is not None and out.errors[k] is None:
                out.inputs[k] = tuple(to_device(row, self.device)) if self.device.type != "cpu" \
                    else tuple(row)
        return out

    def __getstate__(self) -> dict:  # a pickled deployment (a Ray replica) starts its own pool
        return {**self.__dict__, "_pool": None}

    def close(self) -> None:
        """Stop the pool's threads (a later :meth:`decode` starts a new pool)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

