"""Every place a model can be cut, with what each cut would send and what the head costs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from .cut import CrossingTensor, GraphIndex, SplitError
from .graph import Inputs


@dataclass(frozen=True)
class CutPoint:
    """One valid cut: after ``position`` graph nodes, the last being ``node``.

    ``name`` is the outermost module whose last node this is (what ``split`` accepts), else
    the node name; ``modules`` lists every module path ending here, outermost first.
    ``head_params`` counts the parameters the head holds (a weight shared with the tail
    counts on both sides); ``head_flops`` is torch's FLOP count (a multiply-add is 2) of the
    head's nodes on the example inputs; ``total_flops`` that of the whole model.
    """

    name: str
    node: str
    position: int
    modules: tuple[str, ...]
    crossing: tuple[CrossingTensor, ...]
    head_params: int
    head_flops: int
    total_flops: int

    @property
    def numel(self) -> int:
        return sum(c.numel for c in self.crossing)

    @property
    def fp32_bytes(self) -> int:
        return sum(c.fp32_bytes for c in self.crossing)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(c.shape for c in self.crossing)


def _head_params(ix: GraphIndex, head: tuple[fx.Node, ...]) -> int:
    gm = ix.traced.gm
    seen: dict[int, int] = {}
    for n in head:
        if n.op == "call_module":
            for p in gm.get_submodule(n.target).parameters():
                seen[id(p)] = p.numel()
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                value = gm.get_parameter(a.target) if _is_param(gm, a.target) else None
                if value is not None:
                    seen[id(value)] = value.numel()
    return sum(seen.values())


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def cut_points(ix: GraphIndex, modules_only: bool = False) -> list[CutPoint]:
    """Valid cut points in graph order (positions where a non-tensor would cross are left
    out). ``modules_only`` keeps those that end a named module."""
    ends: dict[int, list[str]] = {}
    for path, pos in ix.module_end.items():
        ends.setdefault(pos, []).append(path)
    stats = ix.traced.stats
    total = sum(s.flops for s in stats.values())
    points = []
    for pos in range(1, len(ix.compute) + 1):
        modules = tuple(sorted(ends.get(pos, ()), key=lambda p: (p.count("."), p)))
        if modules_only and not modules:
            continue
        try:
            plan = ix.plan(pos)
        except SplitError:
            continue
        node = ix.compute[pos - 1].name
        points.append(CutPoint(
            name=modules[0] if modules else node, node=node, position=pos, modules=modules,
            crossing=ix.describe(plan), head_params=_head_params(ix, plan.head),
            head_flops=sum(stats[n].flops for n in plan.head if n in stats), total_flops=total))
    return points


def candidates(model: nn.Module, example_inputs: Inputs, *,
               example_kwargs: Mapping[str, Any] | None = None, backend: str = "auto",
               modules_only: bool = False) -> list[CutPoint]:
    """Every cut point of ``model`` for these inputs (see :class:`CutPoint`)."""
    from .api import Partitioner

    parts = Partitioner(model, example_inputs, example_kwargs=example_kwargs, backend=backend)
    return parts.candidates(modules_only)


def _shape(c: CrossingTensor) -> str:
    dims = "x".join(str(s) for s in c.shape) or "scalar"
    dtype = str(c.dtype).removeprefix("torch.")
    return f"{dims} {dtype}" + (" (input)" if c.source == "input" else "")


def format_candidates(cands: list[CutPoint]) -> str:
    """A plain-text table of cut points, one per line, for ``--list`` style output."""
    header = ("pos", "cut", "crossing tensors", "elements", "fp32 bytes", "head params",
              "head MFLOPs")
    rows = [header]
    for c in cands:
        share = f" ({100 * c.head_flops / c.total_flops:.0f}%)" if c.total_flops else ""
        rows.append((str(c.position), c.name, " + ".join(_shape(t) for t in c.crossing),
                     f"{c.numel:,}", f"{c.fp32_bytes:,}", f"{c.head_params:,}",
                     f"{c.head_flops / 1e6:.2f}{share}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {0, 3, 4, 5, 6}
    lines = ["  ".join(v.rjust(w) if i in right else v.ljust(w)
                       for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
