"""Cut a model in two: ``split(model, "layer2", x) -> (head, tail)``, ``tail(*head(x)) ==
model(x)``. :class:`Partitioner` keeps one trace for several cuts and the candidate table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from .build import build_head, build_tail
from .candidates import CutPoint, cut_points
from .cut import CrossingTensor, CutPlan, GraphIndex
from .graph import Inputs, trace


@dataclass(frozen=True)
class SplitInfo:
    """What a split did, attached to both halves as ``split_info``.

    ``crossing`` lists the head's outputs (the tail's inputs) in order; ``rematerialised`` the
    head nodes the tail recomputes instead of receiving (masks, positions, shapes).
    ``dynamic_batch`` says whether the halves accept other batch sizes than the example's.
    """

    at: str
    position: int
    last_head_node: str
    backend: str
    crossing: tuple[CrossingTensor, ...]
    rematerialised: tuple[str, ...]
    dynamic_batch: bool
    notes: tuple[str, ...]

    @property
    def numel(self) -> int:
        return sum(c.numel for c in self.crossing)

    @property
    def fp32_bytes(self) -> int:
        return sum(c.fp32_bytes for c in self.crossing)


class Partitioner:
    """One traced model, cut as often as needed.

    ``example_inputs``: a tensor, a sequence of positional inputs, or a mapping of keyword
    inputs (``example_kwargs`` adds keywords). Non-tensor inputs are fixed at their example
    value. Put the model in eval mode first.
    """

    def __init__(self, model: nn.Module, example_inputs: Inputs, *,
                 example_kwargs: Mapping[str, Any] | None = None, backend: str = "auto") -> None:
        self.traced = trace(model, example_inputs, example_kwargs, backend)
        self.index = GraphIndex(self.traced)

    @property
    def backend(self) -> str:
        return self.traced.backend

    def plan(self, at: str | int) -> CutPlan:
        """Where ``at`` cuts and what crosses (see :mod:`.cut`)."""
        return self.index.plan(self.index.resolve(at))

    def info(self, at: str | int) -> SplitInfo:
        return self._info(at, self.plan(at))

    def _info(self, at: str | int, plan: CutPlan) -> SplitInfo:
        tr = self.traced
        return SplitInfo(str(at), plan.position, self.index.compute[plan.position - 1].name,
                         tr.backend, self.index.describe(plan),
                         tuple(n.name for n in plan.remat), tr.backend == "fx" or tr.dynamic_batch,
                         tuple(tr.notes))

    def split(self, at: str | int) -> tuple[fx.GraphModule, fx.GraphModule]:
        """(head, tail): the head takes the model's tensor inputs and returns a tuple of the
        crossing tensors; the tail takes them positionally and returns the model's output."""
        plan = self.plan(at)
        head = build_head(self.traced, plan)
        tail = build_tail(self.traced, plan, self.index.output)
        head.split_info = tail.split_info = self._info(at, plan)
        return head, tail

    def candidates(self, modules_only: bool = False) -> list[CutPoint]:
        """Every valid cut point (see :func:`.candidates.cut_points`)."""
        return cut_points(self.index, modules_only=modules_only)


def split(model: nn.Module, at: str | int, example_inputs: Inputs, *,
          example_kwargs: Mapping[str, Any] | None = None,
          backend: str = "auto") -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut ``model`` right after module ``at`` (a path such as ``layer2.1``; the cut falls
    after the last graph node that module owns) or after graph node ``at``.

    Returns ``(head, tail)`` with ``tail(*head(*inputs)) == model(*inputs)`` bit for bit.
    Weights stay in the half that uses them (shared by reference when both do). Everything
    the tail needs from before the cut crosses as a tensor, model inputs included, except
    what the tail can rebuild itself: data-independent tensors (causal masks, position ids)
    and shapes. Both halves carry ``split_info`` (:class:`SplitInfo`). Raises
    :class:`~.cut.SplitError` for an unknown ``at`` (listing the valid ones).
    """
    parts = Partitioner(model, example_inputs, example_kwargs=example_kwargs, backend=backend)
    return parts.split(at)
