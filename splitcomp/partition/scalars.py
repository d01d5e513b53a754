"""Scalars (sizes, counts, flags) that must cross a cut travel as small tensors.

Used when the tail needs a Python number it cannot recompute, e.g. ``b = x.size(0)`` taken
from the model input at the top of ``forward`` and used after the cut. ``pack`` runs at the
end of the head, ``unpack`` at the start of the tail; both are exact (ints as int64, floats as
float64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: packing kinds, by Python type of the example value
INT, FLOAT, BOOL, INTS = "int", "float", "bool", "ints"


def packing(value: Any) -> str | None:
    """How ``value`` would be packed into a tensor, or None if it cannot be."""
    if isinstance(value, bool | torch.SymBool):
        return BOOL
    if isinstance(value, int | torch.SymInt):
        return INT
    if isinstance(value, float | torch.SymFloat):
        return FLOAT
    if isinstance(value, torch.Size | tuple | list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return INTS
    return None


def pack(value: Any) -> torch.Tensor:
    """A scalar (or a shape) as a 0-d (or 1-d) tensor that holds it exactly."""
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    if isinstance(value, bool):
        return torch.tensor(value)
    return torch.tensor(value, dtype=torch.int64)


def unpack(t: torch.Tensor, kind: str) -> Any:
    """Inverse of :func:`pack` for a value of packing ``kind``."""
    if kind == INTS:
        return torch.Size(t.tolist())
    return {INT: int, FLOAT: float, BOOL: bool}[kind](t.item())


class Pack(nn.Module):
    """:func:`pack` as a module, so halves that use it stay picklable (fx re-traces a
    ``GraphModule`` when loading it, keeping modules as calls)."""

    _is_impure = False

    def forward(self, value: Any) -> torch.Tensor:
        return pack(value)


class Unpack(nn.Module):
    """:func:`unpack` for one packing kind, as a module (see :class:`Pack`)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, t: torch.Tensor) -> Any:
        return unpack(t, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
