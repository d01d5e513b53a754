"""Calibrate a tokenwise codec context on the edge half of a split LLM (no labels needed).

Writes ``OUT/tokenwise-<id hex>.sctx`` (for ``--codec-context FILE``) and prints its id;
the windows and a full example: :mod:`splitcomp.llm.tokenwise_calibration`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..codecs.tokenwise import context_id, save_context
from ..llm.halves import EdgeHalf
from ..llm.text import default_wikitext, load_lm
from ..llm.tokenwise_calibration import calibrate_edge, tail_windows
from ._checks import lm_name, require_file
from ._common import UsageError, at_least


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2")
    p.add_argument("--split", type=int, required=True)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--text", type=Path, help="calibration text (default: shared WikiText-2)")
    p.add_argument("--out", type=Path, required=True, help="directory for the context file")


def run(args: argparse.Namespace) -> int:
    at_least("--windows", args.windows)
    at_least("--window", args.window)
    at_least("--split", args.split, 0)
    lm_name(args.model)
    require_file(args.text, "--text")
    text = args.text or default_wikitext()
    if text is None:
        raise UsageError("no calibration text: pass --text FILE (or provide ../shared/data)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    torch.set_num_threads(1)
    model, tok = load_lm(args.model)
    ctx = calibrate_edge(EdgeHalf(model, args.split),
                         tail_windows(tok, text, args.window, args.windows))
    path = save_context(ctx, args.out)
    print(f"context {context_id(ctx.to_bytes())} ({len(ctx.to_bytes())} bytes): {path}")
    return 0
