"""Where a JSON result came from: the ``provenance`` block every command's JSON output carries.

The command line boundary (:func:`splitcomp.cli.main`, ``python -m splitcomp.cli.<command>``
and ``splitcomp run``) records the run with :func:`recording`; :func:`provenance` then gives
the parsed arguments (and, from ``splitcomp run``, the experiment file's text and SHA-256),
the git commit of the checkout the package runs from (and whether its tree was dirty; absent
outside a checkout), the versions of the packages that shape the figures, Python, the platform
and the time the run started. :func:`splitcomp.cli._common.write_json` adds it, so no command
has to.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..data.paths import checkout_root

#: distributions whose versions a result records (those installed)
PACKAGES = ("splitcomp", "torch", "numpy", "transformers", "accelerate", "gguf", "constriction",
            "pcodec", "zstandard", "pillow", "safetensors", "websockets", "ray")


@dataclass(frozen=True)
class Experiment:
    """The experiment file a run came from (``splitcomp run``): path, text, which run."""

    path: str
    text: str
    run: int = 1
    runs: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "sha256": hashlib.sha256(self.text.encode()).hexdigest(),
                "run": self.run, "runs": self.runs, "text": self.text}


@dataclass(frozen=True)
class Run:
    """One recorded command: its arguments, its command line, when it started."""

    args: dict[str, Any]
    argv: list[str]
    started: str
    experiment: Experiment | None = None


_current: list[Run] = []


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (paths and other objects as strings, tuples as lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


@contextmanager
def recording(args: argparse.Namespace, argv: Sequence[str],
              experiment: Experiment | None = None) -> Iterator[Run]:
    """Within the block, JSON results record ``args`` (parsed from ``argv``) as their config."""
    run = Run(jsonable(vars(args)), [str(a) for a in argv],
              datetime.now(UTC).isoformat(timespec="seconds"), experiment)
    _current.append(run)
    try:
        yield run
    finally:
        _current.remove(run)


def current() -> Run | None:
    """The run being recorded, if any."""
    return _current[-1] if _current else None


@functools.cache
def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout the package runs from; None outside one (an
    installed package, no git, or a git tree that is not this project's)."""
    root = checkout_root()
    if root is None:
        return None

    def git(*words: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *words], capture_output=True,
                                  text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


@functools.cache
def versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES` (those not installed left out)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["splitcomp"] = __version__  # the code running, whatever the metadata says
    return found


def provenance() -> dict[str, Any]:
    """The ``provenance`` block of a JSON result (module docstring); ``config`` is None when
    no run is recorded (a command's ``run`` called from Python)."""
    run = current()
    out: dict[str, Any] = {
        "config": None if run is None else {"args": run.args, "argv": run.argv},
        "started": run.started if run else datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if run is not None and run.experiment is not None:
        out["experiment"] = run.experiment.to_json()
    git = git_state()
    if git is not None:
        out["git"] = git
    out["versions"] = versions()
    out["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    out["platform"] = platform.platform()
    out["executable"] = sys.executable
    return out


def with_provenance(obj: Any) -> Any:
    """``obj`` with a ``provenance`` block added when it is a mapping without one."""
    if isinstance(obj, dict) and "provenance" not in obj:
        return {**obj, "provenance": provenance()}
    return obj


#: the file beside a folder of results (a report) that holds the provenance of each command
#: that wrote into the folder, oldest first
FOLDER_FILE = "provenance.json"


def add_provenance(tmp: Path, out: Path) -> None:
    """Into ``tmp`` (the new files of the folder ``out``): :data:`FOLDER_FILE`, the records
    of ``out``'s file (kept when readable) and this run's."""
    import json

    runs: list[Any] = []
    try:
        old = json.loads((out / FOLDER_FILE).read_text(encoding="utf-8"))
        runs = list(old["runs"]) if isinstance(old, dict) and isinstance(old.get("runs"),
                                                                          list) else []
    except (OSError, ValueError):
        runs = []
    runs.append(provenance())
    (tmp / FOLDER_FILE).write_text(json.dumps({"runs": runs}, indent=1) + "\n",
                                   encoding="utf-8")
