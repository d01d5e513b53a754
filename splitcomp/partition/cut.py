"""Where a cut falls and what crosses it.

A cut at position ``k`` puts the first ``k`` compute nodes of the graph (in topological order)
in the head and the rest in the tail. What the tail needs from the head is then sorted out:

* weights and constants (``get_attr``) are never sent: each half holds the ones it uses;
* data-independent tensors ("static": built only from weights, constants and shapes, such as
  causal masks, position ids, rotary tables) are rebuilt in the tail instead of sent;
* cheap input-derived tensors ("derived": built from model inputs without learned weights,
  such as a 4-D attention mask made from a 2-D padding mask) are rebuilt in the tail from the
  inputs when those inputs are smaller than the tensor; the inputs then cross instead;
* shapes and other scalars are recomputed in the tail from tensors it has; for export graphs a
  symbolic size (the dynamic batch) is read off any crossing tensor with the same size; when
  neither works (``b = x.size(0)`` at the top of ``forward``, used after the cut) the number
  crosses packed in a small tensor (source ``scalar``, see :mod:`.scalars`);
* every other tensor the tail uses is sent: activations, and original model inputs still needed
  after the cut (an attention mask passed in by the caller crosses as one more tensor).

Checks (``_assert*`` nodes) go to whichever half already has their inputs; they never make a
tensor cross. Getters of multi-output nodes stay with the node, so only tensors cross.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .graph import TracedModel
from .measure import OTHER, SCALAR, TENSOR, TensorSpec
from .scalars import pack

# node kinds
INPUT, PARAM, STATIC, DERIVED, CHECK = "input", "param", "static", "derived", "check"
_COMPUTE_OPS = ("call_function", "call_method", "call_module")


class SplitError(ValueError):
    """A cut that cannot be made: an unknown name, or a position where something that is
    neither a tensor nor a number (a dtype, a list of tensors) would have to cross."""


@dataclass(frozen=True)
class CutPlan:
    """Which nodes run where for one cut.

    ``head``/``tail`` are the compute nodes each half runs, in graph order (the head's only
    those its outputs need). ``crossing`` are the values the head returns, in graph order.
    ``remat`` are head nodes the tail recomputes (static tensors, shapes); ``sym_sources`` maps
    a symbolic size to the crossing tensor and dim it is read from; ``packed`` maps crossing
    scalars to their packing kind (they travel as small tensors, see :mod:`.scalars`).
    """

    position: int
    head: tuple[fx.Node, ...]
    tail: tuple[fx.Node, ...]
    crossing: tuple[fx.Node, ...]
    remat: tuple[fx.Node, ...]
    sym_sources: dict[fx.Node, tuple[fx.Node, int]]
    packed: dict[fx.Node, str]


@dataclass(frozen=True)
class CrossingTensor(TensorSpec):
    """One tensor sent from head to tail: ``source`` is ``activation``, ``input`` (an
    original model input the tail still needs) or ``scalar`` (a size or number packed into a
    small tensor); ``module`` the module that produced it."""

    source: str = "activation"
    module: str = ""


def _is_check(n: fx.Node) -> bool:
    if n.op != "call_function" or n.users:
        return False
    name = getattr(n.target, "__name__", str(n.target))
    return name.startswith("_assert") or "sym_constrain_range" in name


def _mutates(n: fx.Node) -> bool:
    """In place (``relu_``, ``x.add_``, ``inplace=True``, mutable aten ops) or otherwise
    side-effecting; randomness and checks aside."""
    if _is_check(n) or n.op not in ("call_function", "call_method"):
        return False
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    if (name.endswith("_") and not name.endswith("__")) or n.kwargs.get("inplace") is True:
        return True
    return n.op == "call_function" and n.is_impure(impure_random=False)


def _normalize_path(path: str) -> str:
    """``L['self'].layers[0]`` (dynamo) or ``layers.0`` (fx, non-strict export) -> ``layers.0``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path)


class GraphIndex:
    """Per-graph facts the planner reuses for every cut: order, node kinds, module owners."""

    def __init__(self, traced: TracedModel) -> None:
        self.traced = traced
        nodes = list(traced.gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(nodes)}
        self.compute = [n for n in nodes if n.op in _COMPUTE_OPS]
        self.output = next(n for n in nodes if n.op == "output")
        self.learned = {n for n in nodes if n.op == "get_attr"
                        and isinstance(_get_attr(traced.gm, n.target), nn.Parameter)}
        self.kind: dict[fx.Node, str] = {}
        self.input_deps: dict[fx.Node, frozenset[fx.Node]] = {}
        for n in nodes:
            self.kind[n] = self._kind(n)
            if self.kind[n] == DERIVED:
                self.input_deps[n] = frozenset().union(*(
                    {a} if self.kind[a] == INPUT else self.input_deps.get(a, frozenset())
                    for a in n.all_input_nodes))
        self.live: set[fx.Node] = set()  # reaches the output, or has an effect of its own
        for n in reversed(nodes):
            if (n.op in ("output", "placeholder") or self.kind[n] == CHECK or _mutates(n)
                    or any(u in self.live for u in n.users)):
                self.live.add(n)
        self.module_end: dict[str, int] = {}
        self.owners: dict[fx.Node, tuple[str, ...]] = {}
        for pos, n in enumerate(self.compute, start=1):
            self.owners[n] = self._owners(n)
            if self.kind[n] != CHECK:
                for path in self.owners[n]:
                    self.module_end[path] = pos
        self.by_name = {n.name: pos for pos, n in enumerate(self.compute, start=1)}

    def _kind(self, n: fx.Node) -> str:
        if n.op == "placeholder":
            return INPUT
        if n.op == "get_attr":
            return PARAM
        if n.op == "output":
            return OTHER
        if _is_check(n):
            return CHECK
        value_kind = self.traced.stats[n].kind if n in self.traced.stats else OTHER
        if value_kind != TENSOR or not self._pure(n):
            return value_kind
        kinds = {self.kind[a] for a in n.all_input_nodes}
        if kinds <= {PARAM, STATIC, SCALAR}:
            return STATIC
        if kinds <= {PARAM, STATIC, SCALAR, INPUT, DERIVED} and not (
                self.learned.intersection(n.all_input_nodes)):
            return DERIVED
        return value_kind

    def _pure(self, n: fx.Node) -> bool:
        """Deterministic function of its inputs, not in place, not mutated later."""
        if n.op == "call_module" or n.is_impure() or _mutates(n):
            return False
        return not any(_mutates(u) for u in n.users)

    def nbytes(self, n: fx.Node) -> int:
        """Size of a tensor node's value on the example inputs."""
        if n.op == "placeholder":
            value = self.traced.inputs[_placeholder_index(self.traced.gm, n)]
            return value.numel() * value.element_size()
        spec = self.traced.stats[n].spec
        return spec.nbytes if spec is not None else 0

    def _owners(self, n: fx.Node) -> tuple[str, ...]:
        paths = self.traced.module_paths
        found = []
        for entry in (n.meta.get("nn_module_stack") or {}).values():
            path = _normalize_path(entry[0] if isinstance(entry, tuple) else str(entry))
            if path in paths and path not in found:
                found.append(path)
        if n.op == "call_module" and n.target in paths and n.target not in found:
            found.append(n.target)
        return tuple(found)

    def resolve(self, at: str | int) -> int:
        """Cut position for a module path (after its last node), a node name (after it), or
        an int position (1 = after the first compute node)."""
        if isinstance(at, int) and not isinstance(at, bool):
            if not 1 <= at <= len(self.compute):
                raise SplitError(f"position {at} outside 1..{len(self.compute)}")
            return at
        if at in self.module_end:
            return self.module_end[at]
        if at in self.by_name:
            return self.by_name[at]
        raise SplitError(self._unknown(str(at)))

    def _unknown(self, at: str) -> str:
        """Error text: close matches, then the module paths in cut order (the shallow ones
        only, when there are many), then a hint at node names."""
        modules = sorted(self.module_end,
                         key=lambda p: (self.module_end[p], -p.count("."), p))
        close = difflib.get_close_matches(at, [*modules, *self.by_name], n=3)
        shown = modules if len(modules) <= 40 else [p for p in modules if p.count(".") <= 1]
        more = f" (and {len(modules) - len(shown)} deeper)" if len(shown) < len(modules) else ""
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        return (f"unknown cut {at!r}; {hint}modules: {', '.join(shown)}{more}; or one of the "
                f"{len(self.compute)} graph node names (see candidates())")

    def plan(self, position: int) -> CutPlan:
        """The cut after the first ``position`` compute nodes; SplitError if not a valid cut."""
        return _Planner(self, position).plan()

    def describe(self, plan: CutPlan) -> tuple[CrossingTensor, ...]:
        """Shapes (at the example batch), dtypes and origin of what crosses ``plan``."""
        out = []
        for c in plan.crossing:
            if c in plan.packed:
                value = pack(self.traced.stats[c].scalar)
                out.append(CrossingTensor(c.name, tuple(value.shape), value.dtype,
                                          source="scalar", module=""))
                continue
            spec = self.traced.stats[c].spec if c in self.traced.stats else None
            if spec is None:
                value = self.traced.inputs[_placeholder_index(self.traced.gm, c)]
                spec = TensorSpec(c.name, tuple(value.shape), value.dtype)
            owners = self.owners.get(c, ())
            out.append(CrossingTensor(c.name, spec.shape, spec.dtype,
                                      source=INPUT if c.op == "placeholder" else "activation",
                                      module=owners[-1] if owners else ""))
        return tuple(out)


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _placeholder_index(gm: fx.GraphModule, node: fx.Node) -> int:
    return [n for n in gm.graph.nodes if n.op == "placeholder"].index(node)


class _Planner:
    def __init__(self, ix: GraphIndex, position: int) -> None:
        self.ix = ix
        self.position = position
        self.head: set[fx.Node] = set(ix.compute[:position])
        self.tail: list[fx.Node] = []
        for n in ix.compute[position:]:
            if n not in ix.live:
                continue
            src = n.args[0] if n.args else None
            if (n.target is operator.getitem and src in self.head
                    and ix.kind[src] == OTHER):
                self.head.add(n)
            else:
                self.tail.append(n)
        self.tail_set = set(self.tail)

    def plan(self) -> CutPlan:
        ix = self.ix
        strong = [n for n in self.tail if ix.kind[n] != CHECK] + [ix.output]
        needs: dict[fx.Node, None] = {}
        for n in strong:
            for a in n.all_input_nodes:
                if a not in self.tail_set and ix.kind[a] != PARAM:
                    needs[a] = None
        crossing: set[fx.Node] = set()
        for a in needs:
            kind = ix.kind[a]
            if kind in (INPUT, TENSOR):
                crossing.add(a)
            elif kind not in (STATIC, DERIVED, SCALAR):
                raise SplitError(f"{a.name} is used after the cut but is not a tensor "
                                 f"({kind}); cut elsewhere")
        for a in sorted((a for a in needs if ix.kind[a] == DERIVED), key=ix.order.__getitem__):
            extra = ix.input_deps[a] - crossing  # send the inputs when they are smaller
            if sum(map(ix.nbytes, extra)) < ix.nbytes(a):
                crossing.update(extra)
            else:
                crossing.add(a)
        packed: dict[fx.Node, str] = {}
        while True:  # what the tail cannot rebuild after all is sent instead
            resolver = _Resolver(ix, self.tail_set, crossing)
            missing = [a for a in needs if a not in crossing and not resolver.ok(a)]
            for a in sorted(missing, key=ix.order.__getitem__):
                scalars = [a] if ix.kind[a] == SCALAR else resolver.blocking_scalars(a)
                kinds = [ix.traced.stats[v].packing for v in scalars or ()]
                if scalars and all(kinds):
                    crossing.update(scalars)  # a few numbers rather than a tensor
                    packed.update(zip(scalars, kinds, strict=True))
                elif ix.kind[a] == SCALAR:
                    raise SplitError(f"{a.name} (a non-numeric scalar) is needed after the "
                                     "cut and cannot be recomputed there; cut elsewhere")
                else:
                    crossing.add(a)
            if not missing:
                break
        remat, sym_sources = resolver.collect(a for a in needs if a not in crossing)
        head = self._live_head(crossing)
        avail = self.tail_set | crossing | set(remat)
        tail = [n for n in self.tail if ix.kind[n] != CHECK
                or all(a in avail or ix.kind[a] == PARAM for a in n.all_input_nodes)]
        by_order = ix.order.__getitem__
        return CutPlan(self.position, tuple(sorted(head, key=by_order)), tuple(tail),
                       tuple(sorted(crossing, key=by_order)), tuple(sorted(remat, key=by_order)),
                       sym_sources, packed)

    def _live_head(self, crossing: set[fx.Node]) -> set[fx.Node]:
        """Head nodes the crossing values depend on, side-effecting ones, and checks whose
        inputs are there anyway."""
        ix = self.ix
        live: set[fx.Node] = set()
        stack = [n for n in crossing if n in self.head]
        stack += [n for n in self.head if ix.kind[n] != CHECK and _mutates(n)]
        while stack:
            n = stack.pop()
            if n in live or n not in self.head:
                continue
            live.add(n)
            stack.extend(n.all_input_nodes)
        checks = {n for n in self.head if ix.kind[n] == CHECK
                  and all(a in live or ix.kind[a] in (INPUT, PARAM) for a in n.all_input_nodes)}
        return live | checks


class _Resolver:
    """Decides, without making anything new cross, whether the tail can produce a head value:
    ``avail`` (sent or computed in the tail), ``param``, ``copy`` (recompute it) or
    ``("sym", tensor, dim)`` (read a symbolic size off a crossing tensor)."""

    def __init__(self, ix: GraphIndex, tail: set[fx.Node], crossing: set[fx.Node]) -> None:
        self.ix = ix
        self.tail = tail
        self.crossing = crossing
        self.memo: dict[fx.Node, Any] = {}

    def ok(self, v: fx.Node) -> bool:
        return self.decide(v) is not None

    def decide(self, v: fx.Node) -> Any:
        if v in self.memo:
            return self.memo[v]
        kind = self.ix.kind[v]
        if v in self.tail or v in self.crossing:
            result: Any = "avail"
        elif kind == PARAM:
            result = "param"
        elif kind in (STATIC, DERIVED, SCALAR) and v.op != "placeholder":
            self.memo[v] = None  # guards against cycles through odd graphs
            if all(self.decide(a) is not None for a in v.all_input_nodes):
                result = "copy"
            else:
                result = self._sym_source(v) if kind == SCALAR else None
        else:
            result = None
        self.memo[v] = result
        return result

    def _sym_source(self, v: fx.Node) -> Any:
        """A crossing tensor with a dim of the same symbolic size as ``v`` (export graphs)."""
        val = v.meta.get("val")
        if not isinstance(val, torch.SymInt):
            return None
        expr = val.node.expr
        for c in sorted(self.crossing, key=self.ix.order.__getitem__):
            cval = c.meta.get("val")
            if not isinstance(cval, torch.Tensor):
                continue
            for d, size in enumerate(cval.shape):
                if isinstance(size, torch.SymInt) and size.node.expr == expr:
                    return ("sym", c, d)
        return None

    def blocking_scalars(self, v: fx.Node) -> list[fx.Node] | None:
        """The unresolvable scalars that keep static/derived ``v`` from being rebuilt, or None
        when something else (a tensor) is missing too."""
        found: list[fx.Node] = []
        stack, seen = [v], set()
        while stack:
            n = stack.pop()
            if n in seen or self.decide(n) is not None:
                continue
            seen.add(n)
            kind = self.ix.kind[n]
            if kind == SCALAR:
                found.append(n)
            elif kind in (STATIC, DERIVED):
                stack.extend(n.all_input_nodes)
            else:
                return None
        return found

    def collect(self, roots) -> tuple[list[fx.Node], dict[fx.Node, tuple[fx.Node, int]]]:
        """Nodes to recompute in the tail and sizes to read off crossing tensors."""
        remat: list[fx.Node] = []
        sym: dict[fx.Node, tuple[fx.Node, int]] = {}
        seen: set[fx.Node] = set()
        stack = list(roots)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            decision = self.decide(v)
            if decision == "copy":
                remat.append(v)
                stack.extend(v.all_input_nodes)
            elif isinstance(decision, tuple):
                sym[v] = (decision[1], decision[2])
        return remat, sym
