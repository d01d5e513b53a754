"""SC2-style report of a model: rate/accuracy curves per cut with baselines, as PNG and Markdown.

    splitcomp report --model resnet20 --split layer1 --split layer2 --limit 1000 --out DIR

Each codec is swept over its quality grid at each cut; JPEG / WebP / PNG input compression,
raw full offload and the uncompressed accuracy are the baselines. ``--checkpoint CKPT_DIR``
(repeatable) adds trained bottlenecks of the model at their cuts; the whole report then runs
on images none of them trained on (the eval part of their split). Writes ``DIR/report.md``,
``DIR/report.json`` and one PNG per cut. A model already in ``DIR/report.json`` is replaced and
the other models are kept, so one report can hold several models (one command each); any
other non-empty ``DIR``, or a model already in it, needs ``--force``. Files are written to a
temporary folder first and moved into ``DIR`` one by one (``os.replace``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .. import codecs
from ..bench.sc2_report import (
    DEFAULT_CODECS,
    INPUT_CODECS,
    build_report,
    load_report_json,
    write_report,
)
from ..train import CheckpointError, TrainedOnError
from ._checks import check_splits, load_checked_model, open_data, zoo_config
from ._common import (
    UsageError,
    add_force,
    at_least,
    check_output_folder,
    fail,
    model_checkpoints,
    standalone,
    write_folder,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name, e.g. resnet20, mobilenet_v2")
    p.add_argument("--weights", help="weights file, 'hub', or 'random' (default: offline ones)")
    p.add_argument("--split", action="append", default=[], metavar="S",
                   help="cut point (repeatable): module path or graph node name (required "
                   "unless --checkpoint)")
    p.add_argument("--checkpoint", action="append", default=[], type=Path, metavar="CKPT_DIR",
                   help="a trained bottleneck of --model (repeatable; `splitcomp train "
                   "bottleneck`): a row at its cut, and every row on the eval part of its split")
    p.add_argument("--codecs", nargs="+", default=list(DEFAULT_CODECS),
                   choices=codecs.available(), metavar="CODEC",
                   help=f"feature codecs to sweep, of: {' '.join(codecs.available())} "
                   f"(default: {' '.join(DEFAULT_CODECS)})")
    p.add_argument("--input-codecs", nargs="*", default=list(INPUT_CODECS),
                   choices=list(INPUT_CODECS), help="input-compression baselines")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="dataset name or folder (repeatable: concatenated; default: the "
                   "model's dataset)")
    p.add_argument("--limit", type=int, help="use N images spread evenly over the data")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, required=True, help="output folder (one holding a "
                   "report of other models: this model is added)")
    add_force(p)
    p.add_argument("--title", default="", help="report title")
    p.add_argument("--no-progress", action="store_true")


def _adds_a_model(model: str) -> Callable[[Path], bool]:
    """Whether a folder holds a report (``report.json``) without ``model``: adding it is fine."""
    def check(folder: Path) -> bool:
        try:
            return model not in {r.model for r in load_report_json(folder / "report.json")}
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return check


def _check(args: argparse.Namespace) -> list[str]:
    """Everything checkable before the first image is read; the data sources."""
    cfg = zoo_config(args.model)
    at_least("--limit", args.limit)
    at_least("--batch-size", args.batch_size)
    if not args.split and not args.checkpoint:
        raise UsageError("--split is required (or --checkpoint)")
    if (args.out / "report.json").is_file() and not args.force \
            and not _adds_a_model(args.model)(args.out):
        raise UsageError(f"--out {args.out} already holds a report of {args.model} (or an "
                         "unreadable report.json): pass --force to replace it")
    check_output_folder(args.out, args.force, keep=_adds_a_model(args.model))
    data = args.data or [cfg.dataset]
    for d in data:
        open_data(d, cfg)
    return data


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("splitcomp report needs matplotlib (pip install 'splitcomp[plot]')") \
            from None
    torch.set_grad_enabled(False)
    data = _check(args)
    try:
        model, trained = model_checkpoints(args.model, args.checkpoint, args.weights)
        model = load_checked_model(args.model, args.weights) if model is None else model
        check_splits(args.model, args.split, model)
        rep = build_report(args.model, data, args.split, codec_names=args.codecs,
                           input_codecs=args.input_codecs, weights=args.weights,
                           limit=args.limit, batch_size=args.batch_size,
                           progress=not args.no_progress, model=model, trained=trained)
    except (CheckpointError, TrainedOnError) as e:
        return fail(f"--checkpoint: {e}")
    rep.command = _command(args, data)
    existing = args.out / "report.json"
    try:
        reports = [r for r in load_report_json(existing) if r.model != rep.model] \
            if existing.exists() else []
    except (ValueError, KeyError, TypeError):  # unreadable: replaced (--force said so)
        reports = []
    write_folder(args.out, lambda tmp: write_report([*reports, rep], tmp, title=args.title))
    print(f"wrote {args.out / 'report.md'}")
    return 0


def _command(args: argparse.Namespace, data: list[str]) -> str:
    """The command line that reproduces this model's section."""
    words = ["splitcomp", "report", "--model", args.model]
    for s in args.split:
        words += ["--split", s]
    for c in args.checkpoint:
        words += ["--checkpoint", str(c)]
    for d in data:
        words += ["--data", str(d)]
    words += ["--codecs", *args.codecs, "--input-codecs", *args.input_codecs]
    if args.limit:
        words += ["--limit", str(args.limit)]
    if args.weights:
        words += ["--weights", str(args.weights)]
    return shlex.join([*words, "--out", str(args.out)])


def main(argv: list[str] | None = None) -> int:
    return standalone("report", sys.modules[__name__], argv)
