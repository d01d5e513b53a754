"""List the zoo models: input size, classes, whether their default weights are here, cut points.

``splitcomp models`` (or ``splitcomp models 'resnet*'``) prints one row per model: its task,
the data it was trained for, the input size and classes of an image model and its number of
cut candidates (the module cuts ``splitcomp candidates --model NAME`` lists; counting them
traces each model once, ``--no-cuts`` skips that); a causal LM is cut before a block
(``--split K``).
"""

from __future__ import annotations

import argparse

import torch

from ..partition import candidates
from ..zoo import create_model, list_models, model_config
from ._common import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern")
    p.add_argument("--no-cuts", action="store_true", help="do not count the cut candidates")


def _cuts(name: str) -> str:
    cfg = model_config(name)
    if cfg.input_size is None:
        return "-"  # a causal LM: cut before any block (--split K)
    with torch.no_grad():
        model = create_model(name, weights=None)
        return str(len(candidates(model, (torch.zeros(1, *cfg.input_size),), modules_only=True)))


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise UsageError(f"no model matches {args.pattern!r}; the models: "
                         f"{', '.join(list_models())}")
    rows = [("model", "task", "data", "input", "classes", "weights", "cuts")]
    for name in names:
        cfg = model_config(name)
        size = "x".join(map(str, cfg.input_size)) if cfg.input_size else "tokens"
        if cfg.default_weights is None:
            here = "-"  # random (tiny test models) or from --weights only
        else:
            here = "here" if cfg.find_default_weights() is not None else "missing"
        rows.append((name, cfg.task, cfg.dataset or "-", size,
                     str(cfg.num_classes or "-"), here,
                     "-" if args.no_cuts else _cuts(name)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print("(weights: the offline default weights, used unless --weights; 'missing': pass "
          "--weights FILE or random; '-': none. cuts: module cut points, listed by "
          "`splitcomp candidates --model NAME`; a causal LM is cut before block K, --split K)")
    return 0
