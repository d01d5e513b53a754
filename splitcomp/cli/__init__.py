"""Thin command-line entry point: ``splitcomp <command> ...``; each command lives in its module.

A mistake (an unknown model, cut or codec, a missing folder, a value out of range, an output
file that exists, a server that is not there) prints one line ``splitcomp: error: ...`` and
exits with status 2; ``--debug`` shows the traceback instead. An unexpected exception (a bug)
prints its traceback and exits with status 1.
"""

# The top layer: each command is one module of this package, named after it (``eval-lm``:
# ``eval_lm``); commands import any package of splitcomp, and no package imports them.

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import __version__
from ._common import Parser, add_debug, guarded
from ._provenance import recording

#: command name -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "codecs": "splitcomp.cli.codecs",
    "models": "splitcomp.cli.models",
    "candidates": "splitcomp.cli.candidates",
    "eval": "splitcomp.cli.eval",
    "report": "splitcomp.cli.report",
    "demo": "splitcomp.cli.demo",
    "serve": "splitcomp.cli.serve",
    "export": "splitcomp.cli.export",
    "load": "splitcomp.cli.load",
    "generate": "splitcomp.cli.generate",
    "eval-lm": "splitcomp.cli.eval_lm",
    "calibrate-lm": "splitcomp.cli.calibrate_lm",
    "lm-context": "splitcomp.cli.lm_context",
    "plan": "splitcomp.cli.plan",
    "train": "splitcomp.cli.train",
    "run": "splitcomp.cli.run",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The ``splitcomp`` parser and the command modules by name."""
    parser = Parser(prog="splitcomp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"splitcomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0],
                           description=mod.__doc__)
        mod.add_arguments(p)
        modules[name] = mod
    add_debug(parser, top=True)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    """``splitcomp ...``: the exit status (0 done, 1 a bug, 2 a mistake, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if importlib.util.find_spec("torch") is None:  # `pip install splitcomp[edge]` alone
        print("splitcomp: error: the commands need torch: pip install 'splitcomp[torch]' "
              "(the torch-free edge client is splitcomp.edge)", file=sys.stderr)
        return 2
    parser, modules = build_parser()
    parsed: list[argparse.Namespace] = []
    status = guarded(lambda: parsed.append(parser.parse_args(argv)), "--debug" in argv)
    if status:
        return status
    args = parsed[0]
    with recording(args, argv):
        return guarded(lambda: modules[args.command].run(args), args.debug)
