"""Turn a :class:`~.cut.CutPlan` into two ``GraphModule`` halves.

Each half is built on the traced graph module as root, so ``GraphModule`` copies into it only
the submodules, parameters and buffers its own nodes reference, by reference: weights live in
the half that uses them, and a weight both halves use is the same tensor in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from . import scalars
from .cut import CutPlan
from .graph import UNFLATTEN, TracedModel


class InputCheck(nn.Module):
    """Fails early, naming the input, when an exported head gets a shape it was not built
    for (None in ``shapes`` marks a dynamic dim). A module, not a function, so the head stays
    picklable."""

    _is_impure = True  # keep it through dead-code elimination

    def __init__(self, shapes: dict[str, tuple[int | None, ...]]) -> None:
        super().__init__()
        self.shapes = dict(shapes)

    def forward(self, *inputs: Any) -> None:
        for (name, shape), x in zip(self.shapes.items(), inputs, strict=True):
            if (not isinstance(x, torch.Tensor) or x.dim() != len(shape)
                    or any(s is not None and s != d for s, d in zip(shape, x.shape,
                                                                    strict=True))):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                want = tuple("any" if s is None else s for s in shape)
                raise ValueError(f"input {name!r}: this head was exported for shape {want}, "
                                 f"got {got}")


def _helper(traced: TracedModel, name: str, make: Callable[[], nn.Module]) -> str:
    """Register a helper module on the traced graph module (the root both halves copy from)."""
    if not hasattr(traced.gm, name):
        traced.gm.add_module(name, make())
    return name


def _copier(graph: fx.Graph, env: dict[fx.Node, fx.Node],
            make: Callable[[fx.Node], fx.Node | None]) -> Callable[[fx.Node], fx.Node]:
    """Arg mapper: known nodes from ``env``; others made on first use (weights copied as
    ``get_attr``, the rest by ``make``)."""

    def get(a: fx.Node) -> fx.Node:
        if a not in env:
            made = graph.node_copy(a, get) if a.op == "get_attr" else make(a)
            if made is None:
                raise AssertionError(f"{a.name} is not available in this half")
            env[a] = made
        return env[a]

    return get


def _finish(traced: TracedModel, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    graph.lint()
    gm = fx.GraphModule(traced.gm, graph, class_name=class_name)
    gm.training = traced.training  # the module itself only; submodules are the model's own
    return gm


def build_head(traced: TracedModel, plan: CutPlan) -> fx.GraphModule:
    """The head: the model's inputs in, a tuple of the crossing tensors out."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    get = _copier(graph, env, lambda a: None)
    placeholders = [n for n in traced.gm.graph.nodes if n.op == "placeholder"]
    for ph in placeholders:
        env[ph] = graph.node_copy(ph)
    if traced.input_shapes is not None:
        check = _helper(traced, "_split_check_inputs", lambda: InputCheck(traced.input_shapes))
        graph.call_module(check, tuple(env[ph] for ph in placeholders))
    for n in plan.head:
        env[n] = graph.node_copy(n, get)
    outputs = []
    for c in plan.crossing:
        out = get(c)
        if c in plan.packed:
            out = graph.call_module(_helper(traced, "_split_pack", scalars.Pack), (out,))
        outputs.append(out)
    graph.output(tuple(outputs))
    return _finish(traced, graph, "SplitHead")


def build_tail(traced: TracedModel, plan: CutPlan, output: fx.Node) -> fx.GraphModule:
    """The tail: the crossing tensors in (same order), the model's output out."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for c in plan.crossing:
        env[c] = graph.placeholder(c.name)
        env[c].meta = dict(c.meta)
    for c, kind in plan.packed.items():
        name = _helper(traced, f"_split_unpack_{kind}", lambda kind=kind: scalars.Unpack(kind))
        env[c] = graph.call_module(name, (env[c],))
    remat = set(plan.remat)

    def make(a: fx.Node) -> fx.Node | None:
        if a in plan.sym_sources:
            src, dim = plan.sym_sources[a]
            node = graph.call_function(torch.ops.aten.sym_size.int, (env[src], dim))
            node.meta = dict(a.meta)
            return node
        return graph.node_copy(a, get) if a in remat else None

    get = _copier(graph, env, make)
    for n in plan.tail:
        env[n] = graph.node_copy(n, get)
    result = fx.map_arg(output.args[0], get)
    if traced.out_spec is not None:
        result = graph.call_module(UNFLATTEN, tuple(result))
    graph.output(result)
    return _finish(traced, graph, "SplitTail")
