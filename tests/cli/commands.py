"""Running one command module directly: its arguments parsed, its ``run`` called."""

from __future__ import annotations

import argparse
from types import ModuleType


def parse_args(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the parser ``module.add_arguments`` fills."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def run_command(module: ModuleType, argv: list[str]) -> int:
    """``module.run`` on ``argv``."""
    return module.run(parse_args(module, argv))
