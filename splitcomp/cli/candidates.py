"""List every cut point of a zoo model: crossing shapes, bytes, head parameters and FLOPs."""

from __future__ import annotations

import argparse

import torch

from ..partition import candidates, format_candidates
from ..zoo import create_model, model_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--all-nodes", action="store_true", help="every graph node, not only modules")
    p.add_argument("--input-size", type=int, nargs="+", help="C H W (default: the model's)")


def run(args: argparse.Namespace) -> int:
    cfg = model_config(args.model)
    model = create_model(args.model, weights=None)
    size = tuple(args.input_size or cfg.input_size or ())
    if not size:
        raise SystemExit(f"{args.model}: give --input-size")
    example = torch.zeros(1, *size)
    cands = candidates(model, (example,), modules_only=not args.all_nodes)
    print(format_candidates(cands))
    return 0
