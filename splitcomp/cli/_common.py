"""What every command shares: the error boundary (a user's mistake is one line and exit status
2, a bug a traceback), output files (refused over existing ones without ``--force``, written
atomically) and argument helpers.

A command reports a mistake by raising :class:`UsageError` (or returning :func:`fail`); the
boundary (:func:`guarded`, which :func:`splitcomp.cli.main` and :func:`standalone` run every
command in) also turns the exceptions of :data:`USER_ERRORS` and ``SystemExit("message")``
into that one line. Anything else is a bug: its traceback, one line asking for a report,
exit status 1. ``--debug`` lets every exception through with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from torch import nn

from ..codecs import codec_class
from ..runtime.errors import SplitRuntimeError
from ..train import CheckpointError, Trained, open_checkpoints, read_meta
from ._provenance import add_provenance, recording, with_provenance

#: exit status of a user's mistake (as argparse's own)
USAGE_STATUS = 2
#: exit status of a bug (an unexpected exception)
BUG_STATUS = 1


class UsageError(SystemExit):
    """A user's mistake: ``splitcomp: error: <message>`` on one line, exit status 2.

    A :class:`SystemExit`, so that ``except Exception`` in between never swallows it and a
    command run outside the boundary still stops with the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.code)


#: exceptions whose message names a user's mistake (a file, a value, a server): one line
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
    ConnectionError, ValueError, KeyError, ImportError, SplitRuntimeError)


def one_line(message: str) -> str:
    """``message`` on one line (its lines joined, blanks dropped)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: str) -> int:
    """Print a one-line error; returns the exit status 2."""
    print(f"splitcomp: error: {one_line(message)}", file=sys.stderr)
    return USAGE_STATUS


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    print(f"splitcomp: warning: {one_line(message)}", file=sys.stderr)


def describe(e: BaseException) -> str:
    """What went wrong, in the words of the exception (a KeyError without its quotes, an
    OSError as ``PATH: reason``)."""
    if isinstance(e, UsageError) or (isinstance(e, SystemExit) and isinstance(e.code, str)):
        return str(e.code)
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
        return e.args[0]
    if isinstance(e, OSError) and e.strerror and not isinstance(e, SplitRuntimeError):
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror[:1].lower()}{e.strerror[1:]}"
    return str(e) or type(e).__name__


def guarded(command: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``command``: its exit status, or 2 after one line for a user's mistake (module
    docstring), or 1 after the traceback of a bug. ``debug``: every exception goes through."""
    try:
        return int(command() or 0)
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        return fail(describe(e))
    except KeyboardInterrupt:
        if debug:
            raise
        print("splitcomp: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        return fail(describe(e))
    except Exception:
        if debug:
            raise
        traceback.print_exc()
        print("splitcomp: internal error: the traceback above is a bug, not a mistake of "
              "yours; please report it", file=sys.stderr)
        return BUG_STATUS


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a :class:`UsageError`), not usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_debug(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``--debug`` on ``p`` and every sub-command parser below it (tracebacks instead of the
    one-line errors); ``top``: the one place that holds the default."""
    if not any("--debug" in a.option_strings for a in p._actions):
        p.add_argument("--debug", action="store_true",
                       default=False if top else argparse.SUPPRESS,
                       help="show the traceback of any error instead of one line")
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug(sub)


# -- output files ------------------------------------------------------------------------
def add_force(p: argparse._ActionsContainer) -> None:
    """``--force``: replace existing output files (refused otherwise)."""
    p.add_argument("--force", action="store_true",
                   help="replace existing output files (refused otherwise)")


def _creatable(folder: Path) -> str | None:
    """Why ``folder`` (missing parents included) cannot be made or written in, if so."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return f"{folder}: no such place"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" if probe == folder else \
            f"cannot create {folder}: {probe} is not writable"
    return None


def check_output(path: Path | str | None, force: bool = False, flag: str = "--json") -> None:
    """Before any work: :class:`UsageError` when ``path`` exists (without ``force``), is a
    folder, or its folder cannot be created or written in. None: nothing to check."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{flag} {path} exists: pass --force to replace it, or choose "
                         "another name")
    problem = _creatable(path.parent)
    if problem:
        raise UsageError(f"{flag} {path}: {problem}")


def check_output_folder(path: Path, force: bool = False, flag: str = "--out",
                        keep: Callable[[Path], bool] | None = None) -> None:
    """Before any work: :class:`UsageError` when ``path`` is a file, cannot be created, or is
    a non-empty folder (without ``force``) for which ``keep`` (adding to what is there is
    fine) does not say yes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not force and not (keep and keep(path)):
        raise UsageError(f"{flag} {path} exists and is not empty: pass --force to write into "
                         "it (replacing files of the same names), or choose another folder")
    problem = _creatable(path)
    if problem:
        raise UsageError(f"{flag} {path}: {problem}")


def write_atomic(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path`` (missing folders created), then
    ``os.replace`` it onto ``path``: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    """``text`` into ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(obj: Any, path: Path | str | None, indent: int = 1) -> None:
    """``obj`` as JSON into ``path`` atomically (nothing when ``path`` is None); a mapping
    gets the ``provenance`` block of the run (:mod:`._provenance`: config, commit, versions)."""
    if path is not None:
        import json

        write_text(path, json.dumps(with_provenance(obj), indent=indent) + "\n")


def write_folder(out: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_folder)``, then each file it made moved into ``out`` with ``os.replace``
    (files of ``out`` it did not make are kept)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        write(Path(tmp))
        add_provenance(Path(tmp), out)
        out.mkdir(exist_ok=True)
        for f in sorted(Path(tmp).iterdir()):
            os.replace(f, out / f.name)


# -- argument helpers ----------------------------------------------------------------------
def split_param(item: str) -> tuple[str, str]:
    """One ``--param K=V`` -> ``(K, V)`` (V still a string)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--param expects key=value, got {item!r}")
    return key, value


def quality_params(codec: str, quality: float | None) -> dict:
    """``{knob: quality}`` for the codec's quality knob (empty without one)."""
    if quality is None:
        return {}
    knob = codec_class(codec).quality_param
    if not knob:
        raise UsageError(f"codec {codec!r} has no quality knob (--quality): use --param")
    return {knob: quality}


def at_least(flag: str, value: float | None, low: float = 1) -> None:
    """:class:`UsageError` unless ``value`` (when given) is at least ``low``."""
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low:g}, got {value:g}")


def model_checkpoints(model: str, folders: Sequence[Path] | None, weights: str | None
                      ) -> tuple[nn.Module | None, list[Trained]]:
    """``--checkpoint`` folders of ``report`` and ``plan``: those trained around ``model``
    opened beside their teacher (the others skipped with a note on stderr), or (None, [])
    without any. :class:`~splitcomp.train.CheckpointError` when none is of ``model``."""
    if not folders:
        return None, []
    mine = []
    for f in dict.fromkeys(Path(f).resolve() for f in folders):
        of = read_meta(f).get("model")
        if of == model:
            mine.append(f)
        else:
            print(f"splitcomp: note: --checkpoint {f} was trained around {of}, not {model}: "
                  "skipped", file=sys.stderr)
    if not mine:
        raise CheckpointError(f"no --checkpoint was trained around {model}")
    return open_checkpoints(mine, weights)


def standalone(command: str, module: ModuleType, argv: list[str] | None) -> int:
    """Run one command module on its own (``python -m splitcomp.cli.<module>``): the same
    arguments as ``splitcomp <command>``, the module's docstring as the description, the
    same error boundary (:func:`guarded`)."""
    p = Parser(prog=f"splitcomp {command}", description=module.__doc__)
    module.add_arguments(p)
    add_debug(p, top=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    holder: dict[str, argparse.Namespace] = {}

    def parse() -> int:
        holder["args"] = p.parse_args(argv)
        return 0

    status = guarded(parse, "--debug" in argv)
    if status:
        return status
    args = holder["args"]
    with recording(args, [command, *argv]):
        return guarded(lambda: module.run(args), bool(getattr(args, "debug", False)))
