"""Calibrate a tokenwise codec context on the edge half of a split LLM (no labels needed).

    splitcomp calibrate-lm --model smollm2 --split 15 --text FILE --out ctx.sctx
    splitcomp eval-lm --model smollm2 --split 15 --codec tokenwise --param context=ctx.sctx

``--out`` is the context file when it ends in ``.sctx``, else a folder that gets
``tokenwise-<id hex>.sctx``; ``--param context=FILE`` (``eval-lm``, ``generate``, ``serve``) or
``--codec-context FILE`` loads it. The calibration windows are the *last* ``--windows`` windows
of the text (:mod:`splitcomp.llm.tokenwise_calibration`), away from the first ones ``eval-lm``
reports on.

Calibration reads 32 windows (16k tokens) by default: the predictor has ``C^2 / 2``
coefficients, and on SmolLM2 contexts from 8k and 32k tokens coded held-out text 0.03-0.18 bit
per element cheaper at equal KL than one from 2k did (``docs/results/llm_bits.json``); a
shorter text gives what it holds.

By default the context holds a predictor across the hidden state's channels (each channel
coded as its residual against the token's earlier channels: ~0.2 bit per element fewer at the
same error on SmolLM2, ``docs/results/llm_bits.json``); it costs ``C (C - 1)`` bytes
(378 kB at 576 channels) and the decoder a ``C x C`` product a token. ``--no-predict`` writes
the plain context (~48 kB).

By default the encoder also shapes its error to the Fisher matrix of the server half's output
at the cut (:mod:`splitcomp.codecs._tokenwise_shaping`: ~15 % less KL at the same bits on
SmolLM2, ``docs/results/llm_bits.json``). That needs the server half's gradients over the
calibration windows (a backward pass each, a few seconds on a CPU) and writes the encoder's
feedback into the context *file* (``C (C - 1)`` bytes more); the bytes a server receives, and
the id, are the context's alone. ``--no-shape`` leaves it out.

By default each token also gets its own step (:mod:`splitcomp.codecs._tokenwise_alloc`): a
regression from the token's values to its Fisher trace, fitted on the same gradients, makes
the step coarser where a token's coding error moves the next-token distributions less (a
context version 3, ``2 (2 C + 1)`` float32 bytes more; each token ~3.5 bits of offset symbol).
``--no-allocate`` leaves it out.

Each token's channels are coded by trellis-coded quantization
(:mod:`splitcomp.codecs._tokenwise_trellis`: context flags bit 1; ~0.08 bit per element fewer
at the same KL on SmolLM2, the encoder ~3x the CPU); ``--no-trellis`` codes them one by one.
Each token is coded against a guess from the previous token's decoded state, which both ends
keep per session (:mod:`splitcomp.codecs._tokenwise_temporal`: context flags bit 2; ~0.09 bit
per element fewer at the same KL on SmolLM2); ``--no-temporal`` codes each token alone.
Its guess has a low-rank term across channels (``--temporal-rank``, context flags bit 3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..codecs.tokenwise import CONTEXTS, MAX_RANK, RANK, context_id, save_context
from ..llm.halves import EdgeHalf, ServerHalf
from ..llm.text import default_wikitext, load_lm
from ..llm.tokenwise_calibration import calibrate_edge, tail_windows
from ..runtime.llm.contexts import MAX_CONTEXT_BYTES
from ._checks import lm_name, require_file
from ._common import UsageError, add_force, at_least, check_output, write_atomic
from ._llm_args import add_lm_model, set_threads, weights_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_lm_model(p)
    p.add_argument("--split", type=int, required=True,
                   help="cut before this block: the context models the hidden state there")
    p.add_argument("--text", type=Path, help="calibration text (default: shared WikiText-2)")
    p.add_argument("--out", type=Path, required=True,
                   help="the context file (NAME.sctx), or a folder for tokenwise-<id>.sctx")
    p.add_argument("--windows", type=int, default=32,
                   help="calibration windows (32, or as many as the text holds, at least 2)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (512)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--predict", action=argparse.BooleanOptionalAction, default=True,
                   help="predict each channel from the token's earlier ones (default: on)")
    p.add_argument("--shape", action=argparse.BooleanOptionalAction, default=True,
                   help="shape the encoder's error to the Fisher matrix at the cut "
                        "(default: on; needs the server half's gradients)")
    p.add_argument("--allocate", action=argparse.BooleanOptionalAction, default=True,
                   help="give each token a step that follows its predicted Fisher trace "
                        "(default: on; needs the server half's gradients)")
    p.add_argument("--trellis", action=argparse.BooleanOptionalAction, default=True,
                   help="code each token's channels by trellis (dependent) quantization "
                        "(default: on)")
    p.add_argument("--temporal", action=argparse.BooleanOptionalAction, default=True,
                   help="code each token against a guess from the previous token's decoded "
                        "state, which both ends keep per session (default: on)")
    p.add_argument("--temporal-rank", type=int, default=RANK, metavar="R",
                   help=f"principal directions of the previous token's state in that guess, "
                        f"across channels (each costs 4 bytes a channel of context; {RANK}; "
                        f"0: one factor a channel only)")
    add_force(p)


def _is_file(out: Path) -> bool:
    return out.suffix == f".{CONTEXTS.file_ext}" and not out.is_dir()


def run(args: argparse.Namespace) -> int:
    at_least("--windows", args.windows)
    at_least("--window", args.window)
    at_least("--split", args.split, 0)
    if not 0 <= args.temporal_rank <= MAX_RANK:
        raise UsageError(f"--temporal-rank {args.temporal_rank}: 0 .. {MAX_RANK}")
    lm_name(args.model)
    require_file(args.text, "--text")
    text = args.text or default_wikitext()
    if text is None:
        raise UsageError("no calibration text: pass --text FILE (or provide ../shared/data)")
    if _is_file(args.out):
        check_output(args.out, args.force, "--out")
    elif args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder (a context file's name "
                         f"ends in .{CONTEXTS.file_ext})")
    set_threads(args.threads)
    model, tok = load_lm(args.model, weights_arg(args.weights))
    try:
        edge = EdgeHalf(model, args.split)
        server = ServerHalf(model, args.split) if args.shape or args.allocate else None
        windows = tail_windows(tok, text, args.window, args.windows, at_least=2)
    except ValueError as e:  # a split out of range, a text too short
        raise UsageError(str(e)) from None
    if len(windows) < args.windows:
        print(f"note: the text holds {len(windows)} windows of {args.window} tokens: "
              f"calibrating on those", file=sys.stderr)
    try:
        ctx = calibrate_edge(edge, windows, server=server, shape=args.shape,
                             allocate=args.allocate, predict=args.predict,
                             trellis=args.trellis, temporal=args.temporal,
                             temporal_rank=args.temporal_rank)
    except ValueError as e:  # a predictor over too many channels
        raise UsageError(f"{e} (pass --no-predict)") from None
    data = ctx.to_bytes()
    if _is_file(args.out):
        path = write_atomic(args.out, lambda tmp: tmp.write_bytes(ctx.file_bytes()))
    else:
        path = save_context(ctx, args.out)
    extra = "" if ctx.shaping is None else \
        f", {path.stat().st_size - len(data)} more in the file: the encoder's shaping"
    print(f"context {context_id(data)} ({len(data)} bytes{extra}): {path}")
    if len(data) > MAX_CONTEXT_BYTES:
        print(f"note: servers accept client contexts up to {MAX_CONTEXT_BYTES} bytes by "
              f"default: serve with --max-context-bytes {len(data)} or --codec-context FILE, "
              f"or calibrate with --no-predict", file=sys.stderr)
    return 0
