"""Run an experiment file: a TOML (or YAML) file naming a command and its options, or several.

    splitcomp run examples/eval_resnet20_layer2_rans.toml [--force] [--dry-run] [--set limit=200]

A file holds one run (``command`` and its options as keys) or several ``[[run]]`` tables,
run in order (keys outside the tables are shared by all of them):

    command = "eval"                  # "train bottleneck" for a training run
    model = "resnet20"
    split = "layer2"
    codec = "rans"
    param = { bits = 3, clip = 0.99 } # or ["bits=3", "clip=0.99"]: a repeatable option
    json = "results/eval.json"

A key is the option's name (``target_drop`` or ``target-drop`` for ``--target-drop``); true
turns a switch on; a list repeats a repeatable option, fills one that takes several values or
joins a comma-separated one. The argument list each run gets goes through that command's own
parser, so a file means exactly what the command line means; every run is checked (keys,
values, model names, output files) before the first one starts. Each JSON result records the
file's text and SHA-256 in its ``provenance``. Paths are relative to the current folder, as on
the command line. ``--set KEY=VALUE`` (a TOML value) replaces a key in every run whose
command takes it. A ``.yaml`` / ``.yml`` file holds the same keys (with pyyaml installed).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import zoo_config
from ._common import UsageError, add_force, check_output
from ._provenance import Experiment, recording

#: commands an experiment file may run (those that finish and write results)
RUNNABLE = ("eval", "report", "plan", "train", "eval-lm", "lm-context", "candidates", "load",
            "generate")
#: keys that are not options of the command
RESERVED = ("command", "description")
#: output options checked before any run starts: attribute -> flag
OUTPUTS = {"json": "--json", "plan_out": "--plan-out", "profile_out": "--profile-out"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example's lines
    p.add_argument("file", type=Path, metavar="FILE",
                   help="the experiment file (TOML; .yaml or .yml: YAML)")
    add_force(p)
    p.add_argument("--dry-run", action="store_true", help="check the file and print the "
                   "command line of each run, without running anything")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="replace KEY in every run that takes it (VALUE as TOML: 200, "
                   "\"text\", [1, 2]; plain text is taken as a string); repeatable")


@dataclass
class Planned:
    """One run of the file: where it is, its argument list, the parsed arguments."""

    where: str
    argv: list[str]
    args: argparse.Namespace
    keys: frozenset[str]  #: the keys its command takes


def _toml_value(text: str) -> Any:
    """``text`` as a TOML value (plain text: the string itself)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def read_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> {key: TOML value}."""
    sets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        sets[key.strip()] = _toml_value(value)
    return sets


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    """A ``.yaml`` file: the same keys and ``run`` list as a TOML one (needs pyyaml)."""
    try:
        import yaml
    except ImportError:
        raise UsageError(f"{path}: reading YAML needs pyyaml (pip install pyyaml); or write "
                         "the file in TOML") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a mapping of keys to values")
    return doc


def read_runs(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The file's text and its runs (the shared keys merged into each)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") \
            from None
    doc = _parse_yaml(path, text) if path.suffix in (".yaml", ".yml") else _parse_toml(path, text)
    tables = doc.pop("run", None)
    if tables is None:
        runs = [doc]
    elif isinstance(tables, list) and tables and all(isinstance(t, dict) for t in tables):
        runs = [{**doc, **t} for t in tables]
    else:
        raise UsageError(f"{path}: 'run' must be [[run]] tables")
    return text, runs


def _leaf(parser: argparse.ArgumentParser, words: list[str], where: str
          ) -> argparse.ArgumentParser:
    """The parser of ``words`` (``["train", "bottleneck"]``) below the top one."""
    for i, word in enumerate(words):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        choices = subs[0].choices if subs else {}
        if word not in choices:
            known = [c for c in choices if i or c in RUNNABLE]
            raise UsageError(f"{where}: command {' '.join(words)!r}: {word!r} is not one of "
                             f"{', '.join(known)}")
        parser = choices[word]
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        raise UsageError(f"{where}: command {' '.join(words)!r} needs one of "
                         f"{', '.join(subs.choices)} (e.g. {' '.join(words)} "
                         f"{next(iter(subs.choices))})")
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """key (``target_drop``) -> the action of each option and positional of ``parser``."""
    keys: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._VersionAction):
            continue
        names = [o[2:] for o in a.option_strings if o.startswith("--")]
        for name in names or ([] if a.option_strings else [a.dest]):
            keys[name.replace("-", "_")] = a
    return keys


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{where}: expects a number or text, got {value!r}")
    return value if isinstance(value, str) else repr(value)


def to_argv(action: argparse.Action, value: Any, where: str) -> list[str]:
    """The words that give ``action`` the TOML ``value`` (module docstring)."""
    opt = next((o for o in action.option_strings if o.startswith("--")), None)
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: a switch: true or false, got {value!r}")
        return [opt] if value and opt else []
    if isinstance(value, dict):
        value = [f"{k}={_scalar(v, f'{where}.{k}')}" for k, v in value.items()]
    many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    if isinstance(value, list):
        items = [_scalar(v, where) for v in value]
        if isinstance(action, argparse._AppendAction):
            return [w for v in items for w in ([f"{opt}={v}"] if opt else [v])]
        if many:
            return [opt, *items] if opt else items
        value = ",".join(items)
    word = _scalar(value, where)
    if opt is None:
        return [word]
    return [opt, word] if many else [f"{opt}={word}"]


def plan_run(parser: argparse.ArgumentParser, run: dict[str, Any], where: str, force: bool,
             sets: dict[str, Any] | None = None) -> Planned:
    """One table -> its argument list, parsed by the command's parser (UsageError naming
    ``where`` and the key for anything wrong); ``sets`` (``--set``) replace the keys that are
    options of its command (their names are taken out of ``sets``)."""
    command = run.get("command")
    if not isinstance(command, str) or not command.split():
        raise UsageError(f"{where}: needs command = \"...\", one of {', '.join(RUNNABLE)}")
    words = command.split()
    if words[0] not in RUNNABLE:
        raise UsageError(f"{where}: command {command!r} cannot run from a file; one of "
                         f"{', '.join(RUNNABLE)}")
    leaf = _leaf(parser, words, where)
    keys = _options(leaf)
    for key, value in (sets or {}).items():
        if key.replace("-", "_") in keys:
            run = {k: v for k, v in run.items() if k.replace("-", "_") != key.replace("-", "_")}
            run[key] = value
    options: list[str] = []
    positional: list[str] = []
    for key, value in run.items():
        if key in RESERVED:
            continue
        action = keys.get(key.replace("-", "_"))
        if action is None or key.replace("-", "_") in ("debug", "force"):
            known = sorted(k for k in keys if k not in ("debug", "force"))
            raise UsageError(f"{where}: unknown key {key!r} for {command} (known: "
                             f"{', '.join(known)})")
        words_of = to_argv(action, value, f"{where}: key {key!r}")
        (options if action.option_strings else positional).extend(words_of)
    if force and "force" in keys:
        options.append("--force")
    argv = [*words, *options, *positional]
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        raise UsageError(f"{where}: {re.sub(r' [(]see [^()]*--help[)]$', '', e.message)}") \
            from None
    return Planned(where, argv, args, frozenset(keys))


def check_runs(runs: list[Planned], force: bool) -> None:
    """What can be checked of all runs before the first starts: model names, output files
    (existing ones without ``--force``, two runs writing one file)."""
    written: dict[str, str] = {}
    for r in runs:
        model = getattr(r.args, "model", None)
        if isinstance(model, str) and not Path(model).expanduser().exists():
            try:
                zoo_config(model, "model", task=None)
            except UsageError as e:
                raise UsageError(f"{r.where}: {e.message}") from None
        for attr, flag in [*OUTPUTS.items(), ("out", "--out")]:
            value = getattr(r.args, attr, None)
            if value is None:
                continue
            key = str(Path(value).expanduser().resolve())
            if key in written:
                raise UsageError(f"{r.where}: {attr} {value} is also written by "
                                 f"{written[key]}")
            written[key] = r.where
            if attr in OUTPUTS:
                try:
                    check_output(value, force, flag)
                except UsageError as e:
                    raise UsageError(f"{r.where}: {e.message}") from None


def run(args: argparse.Namespace) -> int:
    from . import build_parser  # the same parser as the command line's

    parser, modules = build_parser()
    sets = read_overrides(args.set)
    text, tables = read_runs(args.file)
    many = len(tables) > 1
    planned = [plan_run(parser, t, f"{args.file}" + (f" [run {i}]" if many else ""),
                        args.force, sets) for i, t in enumerate(tables, 1)]
    unused = [k for k in sets if not any(k.replace("-", "_") in p.keys for p in planned)]
    if unused:
        raise UsageError(f"--set {unused[0]}: no run of {args.file} has that option")
    check_runs(planned, args.force)
    if args.dry_run:
        for p in planned:
            print(shlex.join(["splitcomp", *p.argv]))
        return 0
    for i, p in enumerate(planned, 1):
        print(f"splitcomp run: {i}/{len(planned)}: {shlex.join(['splitcomp', *p.argv])}",
              file=sys.stderr, flush=True)
        experiment = Experiment(str(args.file), text, i, len(planned))
        with recording(p.args, p.argv, experiment):
            status = int(modules[p.args.command].run(p.args) or 0)
        if status:
            return status
    return 0
