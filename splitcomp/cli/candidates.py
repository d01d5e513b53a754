"""List every cut point of a zoo model: crossing shapes, bytes, head parameters and FLOPs."""

from __future__ import annotations

import argparse

import torch

from ..partition import FLOPS_NOTE, candidates, format_candidates
from ..zoo import create_model
from ._checks import zoo_config
from ._common import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--all-nodes", action="store_true", help="every graph node, not only modules")
    p.add_argument("--input-size", type=int, nargs="+", help="C H W (default: the model's)")


def run(args: argparse.Namespace) -> int:
    cfg = zoo_config(args.model, task=None)
    size = tuple(args.input_size or cfg.input_size or ())
    if not size:
        raise UsageError(f"{args.model}: give --input-size C H W (or see `splitcomp models`)")
    if len(size) != 3 or min(size) < 1:
        raise UsageError(f"--input-size: expected C H W, positive, got {' '.join(map(str, size))}")
    model = create_model(args.model, weights=None)
    example = torch.zeros(1, *size)
    cands = candidates(model, (example,), modules_only=not args.all_nodes)
    print(format_candidates(cands))
    print(f"(head MFLOPs: {FLOPS_NOTE})")
    return 0
