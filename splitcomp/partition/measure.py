"""Run a traced graph once on example inputs and record, per node, what it produced and the
FLOPs it cost. Cut planning and the candidate table read these records; nothing here decides
where to cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.utils.flop_counter import FlopCounterMode

from .costs import flop_counter
from .scalars import packing

#: how a node's value is treated when it would cross a cut
TENSOR, SCALAR, OTHER = "tensor", "scalar", "other"

_SCALAR_TYPES = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool, torch.dtype,
                 torch.device, torch.Size, type(None))


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor (at the example batch size)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        """Bytes in this tensor's own dtype."""
        return self.numel * self.dtype.itemsize

    @property
    def fp32_bytes(self) -> int:
        """Bytes were it sent as float32 (the usual baseline for a codec's ratio)."""
        return self.numel * 4


@dataclass(frozen=True)
class NodeStat:
    """What one node produced on the example inputs: ``kind`` is ``tensor`` (with ``spec``),
    ``scalar`` (shapes, sizes, dtypes: cheap to recompute) or ``other`` (tuples of tensors...).
    ``packing`` says how a scalar would cross a cut (see :mod:`.scalars`), if it can, and
    ``scalar`` is then its example value."""

    kind: str
    spec: TensorSpec | None
    flops: int
    packing: str | None = None
    scalar: Any = None


def _is_scalar(value: Any) -> bool:
    if isinstance(value, _SCALAR_TYPES):
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, _SCALAR_TYPES) for v in value)


def classify(name: str, value: Any) -> tuple[str, TensorSpec | None]:
    """Kind of a value and, for a tensor, its spec."""
    if isinstance(value, torch.Tensor):
        return TENSOR, TensorSpec(name, tuple(value.shape), value.dtype)
    if _is_scalar(value):
        return SCALAR, None
    return OTHER, None


class _Recorder(fx.Interpreter):
    """Interpreter that notes each node's value kind and the FLOPs counted while it ran."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.counter = counter
        self.stats: dict[fx.Node, NodeStat] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        kind, spec = classify(n.name, result)
        how = packing(result) if kind == SCALAR else None
        self.stats[n] = NodeStat(kind, spec, self.counter.get_total_flops() - before, how,
                                 result if how else None)
        return result


def measure(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> tuple[dict[fx.Node, NodeStat], Any]:
    """Run ``gm`` on ``inputs`` (one value per placeholder); return the per-node records and
    the graph's output. FLOPs are counted as :mod:`.costs` says (a multiply-add is 2;
    convolutions, matmul family, attention; elementwise ops count 0)."""
    with torch.no_grad(), flop_counter() as counter:
        recorder = _Recorder(gm, counter)
        out = recorder.run(*inputs)
    return recorder.stats, out
