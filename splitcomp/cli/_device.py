"""``--device cpu|cuda|auto``, the same flag for ``serve``, ``eval`` and ``eval-lm``."""

from __future__ import annotations

import argparse

from ..runtime.device import DEVICE_CHOICES, DeviceError, resolve_device
from ._common import UsageError


def add_device(p: argparse._ActionsContainer, what: str) -> None:
    """The ``--device`` flag; ``what``: what runs there, for the help."""
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES,
                   help=f"where {what} run: cpu (default), cuda, or auto (cuda when "
                        "available); batches reach a GPU through pinned memory, and a GPU "
                        "this machine lacks is refused before anything loads")


def checked_device(value: str | None) -> str:
    """``--device`` resolved (``auto``: ``cuda`` where available, else ``cpu``); a device
    this machine lacks is a usage error (one line, exit 2)."""
    try:
        return str(resolve_device(value or "cpu"))
    except DeviceError as e:
        raise UsageError(f"--device {value}: {e.reason}") from None
