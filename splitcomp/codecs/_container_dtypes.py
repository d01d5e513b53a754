"""The container's dtype codes (``docs/bitstream.md``, the dtype table): wire code <-> torch
and numpy dtypes (imported and re-exported by :mod:`.container`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: dtype code on the wire -> dtype name (torch's and numpy's, but numpy has no bfloat16)
CODE_NAMES: dict[int, str] = {
    1: "float32", 2: "float16", 3: "bfloat16", 4: "float64", 10: "uint8", 11: "int8",
    12: "int16", 13: "int32", 14: "int64", 15: "bool",
}
NAME_CODES = {v: k for k, v in CODE_NAMES.items()}
#: codes of floating-point tensors: coded by the codec (as float32); the others are sent raw
FLOAT_CODES = frozenset({1, 2, 3, 4})


#: numpy dtypes resolved before (``dtype.name`` costs microseconds), bounded
_NUMPY_CODES: dict[np.dtype, int] = {}


def dtype_code(dtype: Any) -> int:
    """The wire code of a torch dtype, numpy dtype or dtype name; TypeError if unsupported."""
    key = dtype if isinstance(dtype, np.dtype) else None
    if key is not None and key in _NUMPY_CODES:
        return _NUMPY_CODES[key]
    if isinstance(dtype, (np.dtype, type)):
        dtype = np.dtype(dtype).name if np.dtype(dtype).isnative else dtype
    name = str(dtype).removeprefix("torch.")
    if name not in NAME_CODES:
        raise TypeError(f"unsupported dtype {dtype}")
    if key is not None and len(_NUMPY_CODES) < 64:
        _NUMPY_CODES[key] = NAME_CODES[name]
    return NAME_CODES[name]


def torch_dtype(code: int) -> torch.dtype:
    """The torch dtype of a wire code (imports torch)."""
    import torch

    return getattr(torch, CODE_NAMES[code])


def numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of a wire code (bfloat16: float32, numpy has none)."""
    return np.dtype("float32" if code == 3 else CODE_NAMES[code])

