"""Calibrating a ``tokenwise`` context on a split LLM (the edge half only, no labels).

    python -m splitcomp.codecs._tokenwise_calib --split 15 --out contexts/
    SPLITCOMP_TOKENWISE_CONTEXTS=contexts splitcomp eval-lm --split 15 --codec tokenwise \\
        --param context=<printed id> --param level=0

Calibration windows come from the *end* of the text, so they never overlap the first windows
that ``eval-lm`` and ``benchmarks/llm_codecs.py`` report on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ._tokenwise_context import TokenwiseContext, calibrate, context_id, save_context


def tail_windows(tokenizer, path: Path, window: int, count: int) -> torch.Tensor:
    """``count`` non-overlapping ``window``-token windows from the end of a text file."""
    from ..llm.text import _read_text

    text = _read_text(path)
    chars = max(8 * window * count, 4096)
    while True:
        ids = tokenizer.encode(text[-chars:])
        if len(ids) > window * count + 1 or chars >= len(text):
            break
        chars *= 2
    ids = ids[1:]  # the first token may be a fragment of a word cut in the middle
    need = window * count
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens, {count} windows of {window} need {need}")
    return torch.tensor(ids[-need:], dtype=torch.long).view(count, window)


def calibrate_edge(edge, windows: torch.Tensor, **kwargs) -> TokenwiseContext:
    """A context from the edge's hidden states over ``windows`` (count, window), every token
    (each window's first one too: the attention sink gets its share of the scale-code model)."""
    hidden = torch.cat([edge.forward_full(w[None])[0] for w in windows])
    return calibrate(hidden.float().numpy().astype(np.float32), **kwargs)


def main() -> None:
    from ..llm.halves import EdgeHalf
    from ..llm.text import default_wikitext, load_lm

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--split", type=int, required=True)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--text", type=Path, help="calibration text (default: shared WikiText-2)")
    ap.add_argument("--out", type=Path, required=True, help="directory for the context file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_lm(args.model)
    text = args.text or default_wikitext()
    if text is None:
        raise SystemExit("no calibration text: pass --text")
    ctx = calibrate_edge(EdgeHalf(model, args.split),
                         tail_windows(tok, text, args.window, args.windows))
    path = save_context(ctx, args.out)
    print(f"context {context_id(ctx.to_bytes())} ({len(ctx.to_bytes())} bytes): {path}")


if __name__ == "__main__":
    main()
