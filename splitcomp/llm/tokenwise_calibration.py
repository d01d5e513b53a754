"""Calibrating a ``tokenwise`` codec context on a split LLM (the edge half only, no labels).

    splitcomp lm-context --split 15 --out contexts/
    splitcomp eval-lm --split 15 --codec tokenwise --param level=0 \\
        --codec-context contexts/tokenwise-XXXXX.sctx

Calibration windows come from the *end* of the text, so they never overlap the first windows
that ``eval-lm`` and ``benchmarks/llm_codecs.py`` report on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..codecs.tokenwise import TokenwiseContext, calibrate
from .text import _read_text


def tail_windows(tokenizer, path: Path, window: int, count: int, at_least: int | None = None
                 ) -> torch.Tensor:
    """``count`` non-overlapping ``window``-token windows from the end of a text file; with
    ``at_least``, as many as it holds if that is fewer (but not fewer than ``at_least``)."""
    text = _read_text(path)
    chars = max(8 * window * count, 4096)
    while True:
        ids = tokenizer.encode(text[-chars:])
        if len(ids) > window * count + 1 or chars >= len(text):
            break
        chars *= 2
    ids = ids[1:]  # the first token may be a fragment of a word cut in the middle
    if at_least is not None and len(ids) // window >= at_least:
        count = min(count, len(ids) // window)
    need = window * count
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens, {count} windows of {window} need {need}")
    return torch.tensor(ids[-need:], dtype=torch.long).view(count, window)


def calibrate_edge(edge, windows: torch.Tensor, **kwargs) -> TokenwiseContext:
    """A context from the edge's hidden states over ``windows`` (count, window), every token
    (each window's first one too: the attention sink gets its share of the scale-code model)."""
    hidden = torch.cat([edge.forward_full(w[None])[0] for w in windows])
    return calibrate(hidden.float().numpy().astype(np.float32), **kwargs)
