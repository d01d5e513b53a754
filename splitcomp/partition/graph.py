"""Trace a model into one flat graph whose placeholders are its tensor inputs.

``torch.fx.symbolic_trace`` first: fast, shape-agnostic, keeps leaf modules as calls. When fx
cannot trace the model (Hugging Face GPT-2/Llama under transformers 5), or its graph does not
reproduce the model exactly, ``torch.export`` (non-strict) is used instead, with a dynamic
batch dimension when the model allows one. Every graph is run once on the example inputs and
checked against the eager model, so a cut of it starts from an exact copy.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from .measure import NodeStat, measure

Inputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]

#: submodule of an exported graph module that rebuilds the model's output structure
UNFLATTEN = "_split_unflatten"


class OutputUnflatten(nn.Module):
    """Rebuild the model's output structure (e.g. a ``CausalLMOutputWithPast``) from leaves."""

    def __init__(self, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, *leaves: Any) -> Any:
        return pytree.tree_unflatten(list(leaves), self.spec)


@dataclass
class TracedModel:
    """A model as one graph, plus what the cut planner needs to know about it.

    ``gm`` owns the weights (by reference to the model's own tensors) and takes one value per
    placeholder; ``inputs`` are the example values in that order and ``output`` what the graph
    returned for them. Export only: ``out_spec`` rebuilds the model's output structure from
    the graph's flat outputs; ``input_shapes`` gives each input's static dims (None where a
    dim is dynamic).
    """

    gm: fx.GraphModule
    backend: str
    inputs: tuple[Any, ...]
    stats: dict[fx.Node, NodeStat]
    module_paths: frozenset[str]
    training: bool
    output: Any
    out_spec: pytree.TreeSpec | None = None
    input_shapes: dict[str, tuple[int | None, ...]] | None = None
    dynamic_batch: bool = True
    notes: list[str] = field(default_factory=list)


def normalize_inputs(example_inputs: Inputs,
                     example_kwargs: Mapping[str, Any] | None = None
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) from a tensor, a sequence of positional inputs or a mapping of keywords."""
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = tuple(example_inputs), {}
    kwargs.update(example_kwargs or {})
    return args, kwargs


def trace(model: nn.Module, example_inputs: Inputs,
          example_kwargs: Mapping[str, Any] | None = None, backend: str = "auto") -> TracedModel:
    """Trace ``model`` (``backend``: ``auto``, ``fx`` or ``export``) and measure every node."""
    if backend not in ("auto", "fx", "export"):
        raise ValueError(f"backend must be auto, fx or export, not {backend!r}")
    args, kwargs = normalize_inputs(example_inputs, example_kwargs)
    notes: list[str] = []
    if backend in ("auto", "fx"):
        try:
            traced = _fx_trace(model, args, kwargs)
            _verify(traced, model, args, kwargs)
            return traced
        except Exception as exc:  # fx fails in many ways on dynamic Python code
            if backend == "fx":
                raise
            first_line = (str(exc).splitlines() or [""])[0][:160]
            notes.append(f"torch.fx could not trace the model ({type(exc).__name__}: "
                         f"{first_line}); used torch.export")
    traced = _export_trace(model, args, kwargs)
    traced.notes[:0] = notes
    return traced


def _verify(traced: TracedModel, model: nn.Module, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> None:
    """Raise when the graph's output differs from the eager model's (bit for bit). Skipped in
    training mode, where dropout makes two runs differ."""
    if model.training:
        traced.notes.append("model in training mode: the graph was not checked against it")
        return
    with torch.no_grad():
        expected = model(*args, **kwargs)
    out = traced.output
    if traced.out_spec is not None:
        out = pytree.tree_unflatten(list(out), traced.out_spec)
    got, want = pytree.tree_leaves(out), pytree.tree_leaves(expected)
    if len(got) != len(want) or not all(map(_same, got, want)):
        raise RuntimeError(f"the {traced.backend} graph does not reproduce the model exactly")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def _module_paths(model: nn.Module) -> frozenset[str]:
    return frozenset(name for name, _ in model.named_modules() if name)


def _bind(model: nn.Module, gm: fx.GraphModule, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """One example value per placeholder, matched by parameter name (fx and export both name
    placeholders after ``forward``'s parameters), else the placeholder's default."""
    named = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    values = []
    for ph in (n for n in gm.graph.nodes if n.op == "placeholder"):
        if ph.target in named:
            values.append(named[ph.target])
        elif ph.args:
            values.append(ph.args[0])
        else:
            raise TypeError(f"no example value for input {ph.target!r}")
    return tuple(values)


def _fx_trace(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TracedModel:
    if not all(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
        raise TypeError("the fx path takes tensor inputs only")
    gm = fx.symbolic_trace(model)
    for ph in gm.graph.nodes:  # string annotations (PEP 563) break pickling the halves
        if ph.op == "placeholder" and isinstance(ph.type, str):
            ph.type = None
    inputs = _bind(model, gm, args, kwargs)
    stats, out = measure(gm, inputs)
    return TracedModel(gm, "fx", inputs, stats, _module_paths(model), model.training, out)


def _dynamic_batch_example(args: tuple[Any, ...], kwargs: dict[str, Any]):
    """Inputs with a batch of at least 2 (export specialises size-1 dims) and a matching
    ``dynamic_shapes`` tuple marking dim 0 of every batch-sized tensor as dynamic."""
    flat = [*args, *kwargs.values()]
    tensors = [t for t in flat if isinstance(t, torch.Tensor) and t.dim() > 0]
    if not tensors:
        return None
    batch = tensors[0].shape[0]

    def batched(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == batch

    def grow(t: Any) -> Any:
        return torch.cat([t, t]) if batched(t) and batch == 1 else t

    shapes = tuple({0: torch.export.Dim.AUTO} if batched(t) else None for t in flat)
    return (tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}, shapes)


def _export_trace(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TracedModel:
    """Export with a dynamic batch dim if the model allows it and the graph is exact at the
    example's batch; else with static shapes (noted)."""
    notes = []
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params and "use_cache" not in kwargs:
        kwargs = {**kwargs, "use_cache": False}
        notes.append("traced with use_cache=False: a KV cache cannot be returned across a cut")
    example = _dynamic_batch_example(args, kwargs)
    why = "the inputs have no batch dimension"
    if example is not None:
        try:
            ep = torch.export.export(model, example[0], example[1], dynamic_shapes=example[2],
                                     strict=False)
        except Exception as exc:  # fall back to static shapes
            why = f"a dynamic-batch export failed ({type(exc).__name__})"
        else:
            why = "the model fixes its batch size"
            if _has_dynamic_batch(ep):
                try:
                    traced = _from_exported(ep, model, args, kwargs, True, notes)
                    _verify(traced, model, args, kwargs)
                    return traced
                except Exception:  # traced at batch 2; must also hold at the example's batch
                    why = "the dynamic-batch graph does not reproduce the example batch exactly"
    notes.append(f"{why}: exported with static shapes, so the halves only accept the "
                 "example's input shapes")
    ep = torch.export.export(model, args, kwargs, strict=False)
    traced = _from_exported(ep, model, args, kwargs, False, notes)
    _verify(traced, model, args, kwargs)
    return traced


def _from_exported(ep: torch.export.ExportedProgram, model: nn.Module, args: tuple[Any, ...],
                   kwargs: dict[str, Any], dynamic: bool, notes: list[str]) -> TracedModel:
    ep_module = ep.module()
    out_spec = ep_module._out_spec
    gm, input_shapes = _clean_export_module(ep_module)
    gm.add_module(UNFLATTEN, OutputUnflatten(out_spec))  # for the tail; this graph skips it
    inputs = _bind(model, gm, args, kwargs)
    stats, out = measure(gm, inputs)
    return TracedModel(gm, "export", inputs, stats, _module_paths(model), model.training, out,
                       out_spec=out_spec, input_shapes=input_shapes, dynamic_batch=dynamic,
                       notes=list(notes))


def _has_dynamic_batch(ep: torch.export.ExportedProgram) -> bool:
    """Whether dim 0 of the first batched user input stayed symbolic."""
    user_inputs = set(ep.graph_signature.user_inputs)
    for ph in ep.graph.nodes:
        val = ph.meta.get("val") if ph.op == "placeholder" and ph.name in user_inputs else None
        if isinstance(val, torch.Tensor) and val.dim() > 0:
            return isinstance(val.shape[0], torch.SymInt)
    return False


def _clean_export_module(
        ep_module: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, tuple[int | None, ...]]]:
    """Plain copy of ``ExportedProgram.module()``: tensor placeholders only (non-tensor inputs
    were specialised into the graph), no guard call, flat tuple output, plain codegen."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for n in ep_module.graph.nodes:
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            continue
        if n.op == "placeholder":
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor):
                if any(not str(u.target).startswith("_guards") for u in n.users):
                    raise TypeError(f"non-tensor input {n.target!r} is used by the graph")
                continue
            shapes[n.name] = tuple(d if isinstance(d, int) else None for d in val.shape)
        if n.op == "output":
            graph.output(fx.map_arg(n.args[0], lambda a: env[a]))
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(ep_module, graph, class_name="ExportedGraph"), shapes
