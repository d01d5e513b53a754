"""Thin command-line entry point: ``splitcomp <command> ...``; each command lives in its module."""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "codecs": "splitcomp.codecs.cli",
    "candidates": "splitcomp.partition.cli",
    "eval": "splitcomp.bench.cli_eval",
    "report": "splitcomp.bench.cli_report",
    "demo": "splitcomp.bench.demo",
    "serve": "splitcomp.runtime.cli_serve",
    "load": "splitcomp.runtime.cli_load",
    "generate": "splitcomp.llm.cli_generate",
    "eval-lm": "splitcomp.llm.cli_eval",
    "plan": "splitcomp.plan.cli_plan",
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


if __name__ == "__main__":
    sys.exit(main())
