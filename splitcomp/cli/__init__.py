"""Thin command-line entry point: ``splitcomp <command> ...``; each command lives in its module."""

# The top layer: each command is one module of this package, named after it (``eval-lm``:
# ``eval_lm``); commands import any package of splitcomp, and no package imports them.

from __future__ import annotations

import argparse
import importlib

#: command name -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "codecs": "splitcomp.cli.codecs",
    "candidates": "splitcomp.cli.candidates",
    "eval": "splitcomp.cli.eval",
    "report": "splitcomp.cli.report",
    "demo": "splitcomp.cli.demo",
    "serve": "splitcomp.cli.serve",
    "load": "splitcomp.cli.load",
    "generate": "splitcomp.cli.generate",
    "eval-lm": "splitcomp.cli.eval_lm",
    "lm-context": "splitcomp.cli.lm_context",
    "plan": "splitcomp.cli.plan",
    "train": "splitcomp.cli.train",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splitcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)

