"""Export the edge half for devices without PyTorch: ``splitcomp export --model resnet20
--split layer2 --codec slicer --out DIR``.

Writes the head as ONNX (``head.onnx``; with ``--checkpoint``, a trained bottleneck's head and
encoder, its tables and compact template) and ``edge.json`` (input preprocessing, crossing
tensors, codec and parameters, the deployment), then runs the ONNX head beside the torch one.
``--exit EXIT_DIR`` adds a trained early exit (``exit.onnx``), ``--adapter ADAPTER_DIR`` folds a
client adapter into the head (the server unchanged); ``--format onnx,pte`` also writes
an ExecuTorch program.
``splitcomp.edge.EdgeClient(DIR, url=...)`` runs the folder with onnxruntime, numpy and the
codecs, without torch (docs/edge.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._checks import build_codec, check_splits, check_weights, parse_params, zoo_config
from ._common import UsageError, add_force, check_output_folder, standalone, write_folder

FORMATS = ("onnx", "pte")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo model name (e.g. resnet20, mobilenet_v2)")
    p.add_argument("--split", help="where to cut: a module path such as layer2")
    p.add_argument("--codec", default=None,
                   help="codec the edge encodes with (e.g. slicer, rans; a checkpoint: its "
                        "bottleneck)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a codec parameter (repeatable; splitcomp codecs -v lists them)")
    p.add_argument("--quality", type=float, default=None, help="the codec's quality knob")
    p.add_argument("--checkpoint", default=None, metavar="CKPT_DIR",
                   help="a trained bottleneck (splitcomp train bottleneck): export its head "
                        "and encoder; model, split and codec come from it")
    p.add_argument("--adapter", default=None, metavar="ADAPTER_DIR",
                   help="a client adapter (splitcomp train adapter) at the same model and cut, "
                        "folded into the exported head; the server stays the unadapted one")
    p.add_argument("--exit", default=None, metavar="EXIT_DIR",
                   help="an early exit (splitcomp train exit) at the same model and cut: the "
                        "edge answers confident inputs itself (default codec: the exit's)")
    p.add_argument("--weights", default="default",
                   help="'default' (offline default weights), 'random', or a weights file")
    p.add_argument("--deployment", default=None,
                   help="the server deployment the edge talks to (default: as splitcomp serve "
                        "names it: the model, or the checkpoint folder)")
    p.add_argument("--format", default="onnx",
                   help="graph format(s), comma-separated: onnx (what splitcomp.edge runs), "
                        "pte (ExecuTorch, batch of one; needs the executorch package)")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the ONNX head beside the torch one")
    add_force(p)


def _check(args: argparse.Namespace) -> None:
    args.formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats or len(set(args.formats)) != len(args.formats):
        raise UsageError(f"--format {args.format}: give each of {', '.join(FORMATS)} at most "
                         "once, comma-separated")
    if "pte" in args.formats:
        import importlib.util

        if importlib.util.find_spec("executorch") is None:
            raise UsageError("--format pte needs ExecuTorch: pip install executorch")
    check_output_folder(args.out, args.force)
    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint)
        if not (ckpt / "checkpoint.json").is_file():
            raise UsageError(f"--checkpoint {ckpt}: not a checkpoint folder (no checkpoint.json;"
                             " make one with splitcomp train bottleneck)")
        if args.codec not in (None, "bottleneck") or args.param or args.quality is not None:
            raise UsageError("--checkpoint: the codec is the checkpoint's bottleneck; drop "
                             "--codec/--param/--quality")
        if args.exit is not None or args.adapter is not None:
            raise UsageError("--exit and --adapter go with --model/--split, not --checkpoint "
                             "(they were trained on the original head's features)")
        return
    if args.adapter is not None:
        if not (Path(args.adapter) / "checkpoint.json").is_file():
            raise UsageError(f"--adapter {args.adapter}: not an adapter checkpoint folder (no "
                             "checkpoint.json; make one with splitcomp train adapter)")
        if args.exit is not None:
            raise UsageError("--adapter and --exit: the exit was trained on the unadapted "
                             "head's features; export one of them")
    if args.exit is not None and not (Path(args.exit) / "checkpoint.json").is_file():
        raise UsageError(f"--exit {args.exit}: not an exit checkpoint folder (no "
                         "checkpoint.json; make one with splitcomp train exit)")
    if not args.model or not args.split or not (args.codec or args.exit):
        raise UsageError("export needs --model, --split and --codec (or --checkpoint)")
    zoo_config(args.model)
    check_weights(args.model, args.weights)
    check_splits(args.model, [args.split])


def run(args: argparse.Namespace) -> int:
    _check(args)
    from ..edge.export import (
        checkpoint_source,
        exit_codec,
        export_edge,
        with_adapter,
        with_exit,
        zoo_source,
    )
    from ..train import CheckpointError

    weights = None if args.weights == "default" else args.weights
    if args.checkpoint is not None:
        src = checkpoint_source(args.checkpoint, weights, args.deployment)
        if args.model and args.model != src.model or args.split and args.split != src.split:
            raise UsageError(f"--checkpoint {args.checkpoint} is {src.model} at {src.split}, "
                             f"not {args.model} at {args.split}")
    else:
        codec = (build_codec(args.codec, parse_params(args.codec, args.param), args.quality)
                 if args.codec else exit_codec(args.exit))
        src = zoo_source(args.model, args.split, codec, weights, args.deployment)
        if args.exit is not None:
            src = with_exit(src, args.exit)
        if args.adapter is not None:
            try:
                src = with_adapter(src, args.adapter)
            except (ValueError, CheckpointError) as e:
                raise UsageError(f"--adapter: {e}") from None
    made = []
    write_folder(args.out, lambda tmp: made.append(
        export_edge(src, tmp, not args.no_check, args.formats)))
    done = made[0]
    m = done.manifest
    print(f"exported {m.model} head at {m.split} to {args.out}: {', '.join(done.files)}")
    print(f"  codec {m.codec.name} {json.dumps(m.codec.params)}; deployment {m.deployment}; "
          f"sends {', '.join(f'{o.name} {list(o.shape)}' for o in m.outputs)}")
    for fmt, err in done.errors.items():
        print(f"  {fmt} vs torch head: max |diff| {err:.3g} (outputs up to {done.scale:.3g})")
    for note in done.notes:
        print(f"  note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m splitcomp.cli.export ...``."""
    import sys

    return standalone("export", sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
