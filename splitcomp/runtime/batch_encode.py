"""Encode the results of one tail call, row by row, in one pass (the deployment's answers).

A tail call's output holds the results of every request in it; each request gets its rows as a
bitstream of the result codec (``fp32`` or ``fp16``: elementwise, so one call of the codec's
``encode_array`` over the whole output gives every row's payload). Rows of the same shape share
their container header: the first row is encoded by the codec as usual, and when its bytes
are that header, the row's payload and the CRC-32 of both (checked on those bytes, so a
container laid out otherwise keeps the per-row path), the other rows are that header, their
slice of the payload and its CRC. The bytes equal ``codec.encode`` row by row
(``tests/runtime/test_batch_encode.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..codecs import Codec, crc32


def encode_rows(codec: Codec, outputs: Sequence[torch.Tensor], sizes: Sequence[int]
                ) -> list[bytes] | None:
    """One bitstream per request, ``sizes[i]`` rows of ``outputs`` each (as
    ``codec.encode`` of each request's rows), or None when the one-pass path does not apply
    (several outputs, unequal sizes, not float32, a header that differs from row to row)."""
    if len(outputs) != 1 or len(sizes) < 2 or codec.name not in ("fp32", "fp16"):
        return None
    out = outputs[0]
    n = sizes[0]
    if (n < 1 or out.dtype != torch.float32 or out.dim() < 1 or out.shape[0] != n * len(sizes)
            or any(s != n for s in sizes)):
        return None
    arr = out.detach().cpu().contiguous().numpy()
    payload = codec.encode_array(arr)
    step = len(payload) // len(sizes)
    if step * len(sizes) != len(payload):
        return None
    first = codec.encode([torch.from_numpy(arr[:n])])
    head = first[: len(first) - 4 - step]
    crc = crc32(head)
    if first[len(head):] != payload[:step] + crc32(payload[:step], crc).to_bytes(4, "little"):
        return None
    streams = [first]
    for k in range(step, len(payload), step):
        row = payload[k:k + step]
        streams.append(head + row + crc32(row, crc).to_bytes(4, "little"))
    return streams


__all__ = ["encode_rows"]
