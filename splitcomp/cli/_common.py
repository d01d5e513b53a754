"""Argument helpers shared by several commands."""

from __future__ import annotations

import argparse
from types import ModuleType

from ..codecs import codec_class


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


def standalone(command: str, module: ModuleType, argv: list[str] | None) -> int:
    """Run one command module on its own (``python -m splitcomp.cli.<module>``): the same
    arguments as ``splitcomp <command>``, the module's docstring as the description."""
    p = argparse.ArgumentParser(prog=f"splitcomp {command}", description=module.__doc__)
    module.add_arguments(p)
    return module.run(p.parse_args(argv))
