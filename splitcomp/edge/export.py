"""Export the edge half: the head (with a trained checkpoint, the head and the bottleneck
encoder) as ONNX, and ``edge.json`` beside it (:mod:`.manifest`).

This module needs torch (it builds and cuts the model); the client that runs the result
(:mod:`.client`) does not. ``splitcomp export`` is its command line.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__, codecs
from ..codecs.container import template
from ..partition import split
from ..zoo import load_model, model_config
from .manifest import CodecSpec, ExitSpec, InputSpec, Manifest, TensorSpec, write_manifest

#: the head's file in an export folder, per format
HEAD_FILES = {"onnx": "head.onnx", "pte": "head.pte"}
HEAD_FILE = HEAD_FILES["onnx"]
#: the early exit's file (with an exit checkpoint)
EXIT_FILE = "exit.onnx"
#: the bottleneck tables' and the compact template's files (checkpoints only)
TABLES_FILE = "tables.sbnt"
TEMPLATE_FILE = "template.bin"
#: largest |ONNX - torch| accepted, relative to the largest |torch| output (fp32 kernels differ)
CHECK_RTOL = 1e-4


@dataclass
class Exported:
    """What :func:`export_edge` wrote and checked."""

    folder: Path
    manifest: Manifest
    files: list[str] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)  #: format -> max |it - torch|
    scale: float | None = None  #: the largest |torch| output of the checked batch
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EdgeSource:
    """The torch side of an export: the module the edge runs, its example input, the
    crossing tensors' names and the codec."""

    module: nn.Module
    example: torch.Tensor
    outputs: tuple[TensorSpec, ...]
    codec: codecs.Codec
    deployment: str
    model: str
    split: str
    input: InputSpec
    tables: bytes | None = None  #: bottleneck tables (checkpoints)
    weights: str | None = None
    checkpoint: str | None = None
    exit: nn.Module | None = None  #: an ``EdgeExit`` on the first output (``exit_spec`` too)
    exit_spec: ExitSpec | None = None
    adapter: str | None = None  #: a client adapter's folder, folded into ``module``


def _input_spec(name: str) -> InputSpec:
    cfg = model_config(name)
    if cfg.input_size is None:
        raise ValueError(f"{name} does not take images: only image models export to the edge")
    pre = cfg.preprocess()
    return InputSpec(size=tuple(cfg.input_size), mean=tuple(pre.mean), std=tuple(pre.std),
                     resize=pre.resize, crop=pre.crop)


def zoo_source(model_name: str, at: str, codec: codecs.Codec, weights: str | None = None,
               deployment: str | None = None, model: nn.Module | None = None) -> EdgeSource:
    """A zoo model cut at ``at``: its head, as ``splitcomp serve --model --split`` serves
    the tail (deployment named after the model unless ``deployment``). ``model``: the zoo
    model already loaded (``weights`` then only goes into edge.json)."""
    spec = _input_spec(model_name)
    if model is None:
        model = load_model(model_name, None if weights in (None, "default") else weights)
    model.eval()
    example = torch.zeros(1, *spec.size)
    head, _tail = split(model, at, (example,))
    outs = tuple(TensorSpec(f"crossing{i}", tuple(c.shape[1:]), str(c.dtype).removeprefix(
        "torch."), c.module or c.name) for i, c in enumerate(head.split_info.crossing))
    return EdgeSource(head, example, outs, codec, deployment or model_name, model_name, at,
                      spec, weights=weights)


def checkpoint_source(folder: str | Path, weights: str | None = None,
                      deployment: str | None = None) -> EdgeSource:
    """A trained bottleneck checkpoint: head + encoder, the ``bottleneck`` codec with its
    tables, as ``splitcomp serve --checkpoint`` serves it (deployment named after the
    folder unless ``deployment``)."""
    from ..train import open_checkpoints
    from ..train.ckpt_eval import checkpoint_codec, checkpoint_tables

    _model, (trained,) = open_checkpoints([folder], weights)
    ckpt = trained.ckpt
    edge = ckpt.edge_model()
    spec = _input_spec(ckpt.model)
    example = torch.zeros(1, *spec.size)
    with torch.inference_mode():
        latent = edge(example)
    codec, _ = checkpoint_codec(ckpt)
    outs = (TensorSpec("latent", tuple(latent.shape[1:]), "float32", f"{ckpt.cut}+encoder"),)
    return EdgeSource(edge, example, outs, codec, deployment or trained.name, ckpt.model,
                      ckpt.cut, spec, tables=checkpoint_tables(ckpt).to_bytes(),
                      weights=weights, checkpoint=str(folder))


def with_exit(src: EdgeSource, folder: str | Path) -> EdgeSource:
    """``src`` with the early exit of the exit checkpoint ``folder`` (``splitcomp train
    exit``), which must have been trained at the same model and cut."""
    from dataclasses import replace

    from ..train.exit_ckpt import load_exit

    ck = load_exit(folder)
    if (ck.model, ck.cut) != (src.model, src.split):
        raise ValueError(f"exit checkpoint {folder} is for {ck.model} at {ck.cut}, not "
                         f"{src.model} at {src.split}")
    if (ck.weights or None) != (None if src.weights == "default" else src.weights):
        raise ValueError(f"exit checkpoint {folder} was trained around weights "
                         f"{ck.weights or 'default'}, not {src.weights or 'default'}")
    spec = ExitSpec(EXIT_FILE, ck.exit.threshold, ck.exit.rule)
    return replace(src, exit=ck.exit.eval(), exit_spec=spec)


def with_adapter(src: EdgeSource, folder: str | Path) -> EdgeSource:
    """``src`` with the client adapter of ``folder`` (``splitcomp train adapter``) folded into
    the exported head: its input adapter before the head, its adapter on the crossing tensor
    after it. The server's deployment is the unadapted model's: it stays untouched."""
    from dataclasses import replace

    from ..train.adapters import load_adapter

    ck = load_adapter(folder)
    if (ck.model, ck.cut) != (src.model, src.split):
        raise ValueError(f"adapter checkpoint {folder} is for {ck.model} at {ck.cut}, not "
                         f"{src.model} at {src.split}")
    if (ck.weights or None) != (None if src.weights == "default" else src.weights):
        raise ValueError(f"adapter checkpoint {folder} was trained around weights "
                         f"{ck.weights or 'default'}, not {src.weights or 'default'}")
    if len(src.outputs) != 1:
        raise ValueError("an adapter needs a cut with one crossing tensor")
    return replace(src, module=ck.edge_model(src.module), adapter=str(folder))


def exit_codec(folder: str | Path) -> codecs.Codec:
    """The server path's codec an exit checkpoint was calibrated with."""
    from ..train.exit_ckpt import load_exit

    return load_exit(folder).server_codec()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs warnings about optional packages (torchvision ops) and
    deprecations of its own internals: not the user's business."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


class _Outputs(nn.Module):
    """The module's outputs as a flat tuple (a head returns a tuple, an encoder a tensor)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(x)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path,
                output_names: Sequence[str], input_name: str = "input") -> None:
    """``module`` as one self-contained ONNX file with a dynamic batch axis."""
    wrapped = _Outputs(module).eval()
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(wrapped, (example,), str(path), input_names=[input_name],
                          output_names=list(output_names), dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                          verbose=False)


def export_pte(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``module`` as an ExecuTorch program (XNNPACK-delegated, batch of one: the shape of
    ``example``); needs the ``executorch`` package."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _quiet_exporter(), torch.no_grad():
        ep = torch.export.export(_Outputs(module).eval(), (example,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        path.write_bytes(prog.to_executorch().buffer)


def check_pte(module: nn.Module, path: Path, size: Sequence[int], seed: int = 0
              ) -> tuple[float, float]:
    """:func:`check_onnx` for an ExecuTorch program (its Python runtime imports torch)."""
    from executorch.runtime import Runtime

    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = _Outputs(module)(x)
    got = Runtime.get().load_program(str(path)).load_method("forward").execute([x])
    err = max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True))
    return err, max(float(r.abs().max()) for r in ref)


def check_onnx(module: nn.Module, path: Path, size: Sequence[int], batch: int = 2,
               seed: int = 0) -> tuple[float, float]:
    """(largest |ONNX - torch| over the outputs, largest |torch|) on a random batch."""
    import onnxruntime as ort

    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = _Outputs(module)(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    pairs = [(g, r) for g, r in zip(got, ref, strict=True) if r.is_floating_point()]
    err = max(float(np.max(np.abs(g - r.numpy()))) for g, r in pairs)
    return err, max(float(r.abs().max()) for _, r in pairs)


def export_edge(src: EdgeSource, out: str | Path, check: bool = True,
                formats: Sequence[str] = ("onnx",)) -> Exported:
    """Write ``src``'s head in each of ``formats`` (the first is edge.json's ``head``, the
    others its ``extra_formats``), the codec's side files and ``edge.json`` into ``out``
    (created); with ``check``, run each exported head beside the torch one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [o.name for o in src.outputs]
    for fmt in formats:
        if fmt == "onnx":
            export_onnx(src.module, src.example, out / HEAD_FILES[fmt], names, src.input.name)
        elif fmt == "pte":
            export_pte(src.module, src.example, out / HEAD_FILES[fmt])
        else:
            raise ValueError(f"unknown format {fmt!r}: one of {', '.join(HEAD_FILES)}")
    files = [HEAD_FILES[f] for f in formats]
    if src.exit is not None:
        with torch.inference_mode():
            feats = _Outputs(src.module)(src.example)[0]
        export_onnx(src.exit, feats.clone(), out / EXIT_FILE,
                    ["logits", "confidence", "exits"], "features")
        files.append(EXIT_FILE)
    tables = tpl = None
    compact = False
    if src.tables is not None:
        (out / TABLES_FILE).write_bytes(src.tables)
        shape = (1, *src.outputs[0].shape)  # the compact template: a batch of one latent
        (out / TEMPLATE_FILE).write_bytes(template(src.codec, shape, "float32"))
        tables, tpl, compact = TABLES_FILE, TEMPLATE_FILE, True
        files += [TABLES_FILE, TEMPLATE_FILE]
    manifest = Manifest(
        model=src.model, split=src.split, deployment=src.deployment,
        head=HEAD_FILES[formats[0]], head_format=formats[0], input=src.input,
        outputs=src.outputs,
        codec=CodecSpec(src.codec.name, dict(src.codec.params), compact, tables, tpl),
        weights=src.weights, checkpoint=src.checkpoint, exit=src.exit_spec,
        adapter=src.adapter,
        extra_formats={f: HEAD_FILES[f] for f in formats[1:]},
        exported_with={"splitcomp": __version__, "torch": torch.__version__.split("+")[0]})
    write_manifest(manifest, out)
    files.append("edge.json")
    done = Exported(out, manifest, files)
    if check:
        for fmt in formats:
            checker = check_onnx if fmt == "onnx" else check_pte
            try:
                err, scale = checker(src.module, out / HEAD_FILES[fmt], src.input.size)
            except ImportError as e:
                done.notes.append(f"{fmt}: its runtime is not installed here ({e.name}): "
                                  "the exported head was not run")
                continue
            if err > CHECK_RTOL * max(scale, 1.0):
                raise RuntimeError(f"the {fmt} head differs from the torch head by {err:.3g} "
                                   f"(outputs up to {scale:.3g})")
            done.errors[fmt] = err
            done.scale = scale
        if src.exit is not None and "onnx" in done.errors:
            err, scale = check_onnx(src.exit, out / EXIT_FILE, src.outputs[0].shape)
            if err > CHECK_RTOL * max(scale, 1.0):
                raise RuntimeError(f"the ONNX exit differs from the torch exit by {err:.3g}")
            done.errors["exit"] = err
    return done


def torch_reference(src: EdgeSource, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The torch edge's outputs for a normalised batch (what the ONNX head must match)."""
    with torch.inference_mode():
        return _Outputs(src.module)(x)

