"""The old name of ``splitcomp calibrate-lm`` (same arguments; kept so scripts keep working)."""

from __future__ import annotations

from .calibrate_lm import add_arguments, run

__all__ = ["add_arguments", "run"]
