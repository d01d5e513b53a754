"""Argument helpers shared by several commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from torch import nn

from ..codecs import codec_class
from ..train import CheckpointError, Trained, open_checkpoints, read_meta


def fail(message: str) -> int:
    """Print a one-line error; returns the exit status 2."""
    print(f"splitcomp: error: {message}", file=sys.stderr)
    return 2


def split_param(item: str) -> tuple[str, str]:
    """One ``--param K=V`` -> ``(K, V)`` (V still a string)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--param expects key=value, got {item!r}")
    return key, value


def quality_params(codec: str, quality: float | None) -> dict:
    """``{knob: quality}`` for the codec's quality knob (empty without one)."""
    if quality is None:
        return {}
    knob = codec_class(codec).quality_param
    if not knob:
        raise SystemExit(f"codec {codec!r} has no quality knob")
    return {knob: quality}


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
    arguments as ``splitcomp <command>``, the module's docstring as the description."""
    p = argparse.ArgumentParser(prog=f"splitcomp {command}", description=module.__doc__)
    module.add_arguments(p)
    return module.run(p.parse_args(argv))
