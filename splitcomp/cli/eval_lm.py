"""Perplexity (WikiText-2) and HellaSwag accuracy of a split LLM, uncompressed and through a
codec, in one run, with the exact bits per hidden-state element and bytes per token.

Windows are non-overlapping (stride = window), teacher-forced. Each token's hidden state is
its own bitstream (as a decode step sends it) unless ``--per-message``, which codes each
window / each HellaSwag row as one bitstream. ``--target-ppl-increase`` walks the codec's
quality grid down from the highest rate on calibration windows that follow the reported ones,
stops at the first setting that misses the target, and reports the last one that met it on the
reported windows. A setting meets it when the increase it would cause on other text of as
many windows stays under the target with probability ``--confidence``
(:func:`~splitcomp.llm.lm_eval.increase_bound`): a setting chosen at the limit of one text
often lands over it on another (``docs/results/llm_chooser.json``).

Generation quality (:mod:`splitcomp.llm.gen_eval`): the split model's own greedy continuations
of ``--gen-prompts`` fixed prompts (``--gen-tokens`` each), every token's hidden state through
the codec, against the whole model's: ``gen_agreement`` (share of positions equal),
``first_divergence_mean`` and ``gen_exact_match`` on short factual answers (whole model:
``gen_exact_match_baseline``). Perplexity is teacher-forced and can hide a setting that derails
generation; ``--target-ppl-increase`` therefore also refuses any setting whose agreement on
``--calib-gen-prompts`` other prompts is below ``--min-agreement``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import codecs
from ..llm.gen_eval import GenEval, calibration_prompts, load_prompts, report_prompts
from ..llm.halves import EdgeHalf, ServerHalf
from ..llm.lm_eval import (
    choice_accuracy,
    choice_batches,
    choose_quality,
    compare,
    edge_pass,
    increase_pct,
)
from ..llm.text import default_hellaswag, default_wikitext, load_lm, read_hellaswag, token_windows
from ..runtime.device import on_device
from ._checks import lm_name
from ._common import UsageError, add_force, at_least, check_output, warn, write_json
from ._device import add_device, checked_device
from ._llm_args import add_common, codec_params, make_codec, set_threads, weights_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    q = p.add_mutually_exclusive_group()
    q.add_argument("--quality", type=float, help="value of the codec's quality parameter")
    q.add_argument("--target-ppl-increase", type=float, metavar="PCT",
                   help="choose the lowest-rate quality such that it and every higher one raise "
                        "perplexity by at most PCT %% (as --confidence bounds it from calibration "
                        "windows); report on others")
    p.add_argument("--windows", type=int, default=8, help="WikiText windows reported (8)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (512)")
    p.add_argument("--calib-windows", type=int, default=8,
                   help="calibration windows for --target-ppl-increase (8)")
    p.add_argument("--confidence", type=float, default=0.9, metavar="P",
                   help="--target-ppl-increase holds on other text of as many windows with "
                        "probability P, estimated from the calibration windows' spread (0.9; "
                        "0.5: the increase on the calibration windows itself)")
    p.add_argument("--items", type=int, default=40,
                   help="HellaSwag items, the first N of the file (40; 0 skips)")
    p.add_argument("--wikitext", type=Path, help="text file (default: shared WikiText-2 valid)")
    p.add_argument("--hellaswag", type=Path,
                   help="HellaSwag file, 6 lines an item, .bz2 or text (default: shared)")
    g = p.add_argument_group("generation quality")
    g.add_argument("--gen-prompts", type=int, default=32,
                   help="prompts whose greedy continuations are compared (32; 0 skips)")
    g.add_argument("--gen-tokens", type=int, default=64, help="new tokens per prompt (64)")
    g.add_argument("--min-agreement", type=float, default=0.9, metavar="F",
                   help="--target-ppl-increase picks no setting whose generation agreement on "
                        "the calibration prompts is below F (0.9)")
    g.add_argument("--calib-gen-prompts", type=int, default=16,
                   help="calibration prompts for --min-agreement (16, the last of the prompt "
                        "set, disjoint from the reported ones; 0: no floor)")
    p.add_argument("--json", type=Path, help="write the figures here")
    add_force(p)
    add_device(p, "the server half (a copy; edge half and generation checks: CPU)")


def _require(path: Path | None, what: str, flag: str) -> Path:
    if path is None or not path.is_file():
        raise UsageError(f"{what} not found: pass {flag} PATH (or provide ../shared/data)")
    return path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_gen(args: argparse.Namespace) -> None:
    at_least("--gen-tokens", args.gen_tokens)
    at_least("--gen-prompts", args.gen_prompts, 0)
    at_least("--calib-gen-prompts", args.calib_gen_prompts, 0)
    if not 0.0 <= args.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement {args.min_agreement}: a share, 0 .. 1")
    have = len(load_prompts())
    calib = args.calib_gen_prompts if args.target_ppl_increase is not None else 0
    if args.gen_prompts + calib > have:
        raise UsageError(f"--gen-prompts {args.gen_prompts}"
                         + (f" + --calib-gen-prompts {calib}" if calib else "")
                         + f": the prompt set has {have} (reported and calibration prompts "
                           "must not overlap)")


def _gen_guard(args: argparse.Namespace, model: Any, tok: Any, per_token: bool) -> Any:
    """The agreement floor for :func:`choose_quality` (None without calibration prompts)."""
    if args.calib_gen_prompts == 0:
        return None
    ge = GenEval(model, tok, args.split, calibration_prompts(args.calib_gen_prompts),
                 args.gen_tokens)

    def guard(codec: Any) -> tuple[bool, dict[str, Any]]:
        q = ge.evaluate(codec, per_token)
        return q.agreement >= args.min_agreement, {
            "gen_agreement": q.agreement, "first_divergence_mean": q.first_divergence_mean}

    return guard


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; returns the JSON report."""
    t0 = time.perf_counter()
    for flag in ("--windows", "--window", "--calib-windows"):
        at_least(flag, getattr(args, flag[2:].replace("-", "_")))
    at_least("--items", args.items, 0)
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence {args.confidence}: a probability, 0 < P < 1")
    if args.target_ppl_increase is not None and args.confidence != 0.5 and args.calib_windows < 2:
        raise UsageError("--confidence other than 0.5 needs --calib-windows 2 or more")
    at_least("--split", args.split, 0)
    check_output(args.json, getattr(args, "force", False))
    _check_gen(args)
    lm_name(args.model)
    device = checked_device(args.device)  # a GPU this machine lacks: before any loading
    params = codec_params(args)
    cls = codecs.codec_class(args.codec)
    if (args.quality is not None or args.target_ppl_increase is not None) and not cls.quality_param:
        raise UsageError(f"{args.codec} has no quality parameter")
    if args.quality is not None:
        params[cls.quality_param] = args.quality
        make_codec(args.codec, params)  # out of range: now
    wikitext = _require(args.wikitext or default_wikitext(), "WikiText", "--wikitext")
    if args.items > 0:
        _require(args.hellaswag or default_hellaswag(), "HellaSwag", "--hellaswag")
    set_threads(args.threads)
    per_token = not args.per_message
    model, tok = load_lm(args.model, weights_arg(args.weights))
    edge, server = EdgeHalf(model, args.split), ServerHalf(model, args.split)
    server.part = on_device(server.part, device, copy=True)
    calib_n = args.calib_windows if args.target_ppl_increase is not None else 0
    windows = token_windows(tok, wikitext, args.window, args.windows + calib_n)
    batches = [edge_pass(edge, w[None]) for w in windows]
    report_b, calib_b = batches[: args.windows], batches[args.windows :]
    calibration = None
    if args.target_ppl_increase is not None:
        _log(f"calibrating {args.codec} on {calib_n} windows ...")
        calibration = choose_quality(
            server, calib_b, lambda q: make_codec(args.codec, {**params, cls.quality_param: q}),
            cls.quality_grid, args.target_ppl_increase, per_token,
            _gen_guard(args, model, tok, per_token), args.confidence)
        params[cls.quality_param] = calibration.quality
    codec = make_codec(args.codec, params)
    _log(f"perplexity over {args.windows} x {args.window} tokens ...")
    cmp = compare(server, report_b, codec, per_token)
    base, coded = cmp.base, cmp.coded
    hs_base = hs = None
    items = 0
    if args.items > 0:
        path = _require(args.hellaswag or default_hellaswag(), "HellaSwag", "--hellaswag")
        _log(f"HellaSwag over {args.items} items ...")
        cb = choice_batches(edge, tok, read_hellaswag(path, args.items))
        items = len(cb)
        hs_base = choice_accuracy(server, cb, None)
        hs = choice_accuracy(server, cb, codec, per_token)
    gen: dict[str, Any] = {"gen_agreement": None, "first_divergence_mean": None,
                           "gen_exact_match": None, "gen_exact_match_baseline": None,
                           "gen_prompts": 0, "gen_tokens": args.gen_tokens}
    if args.gen_prompts > 0:
        _log(f"greedy generation, {args.gen_prompts} prompts x {args.gen_tokens} tokens ...")
        ge = GenEval(model, tok, args.split, report_prompts(args.gen_prompts), args.gen_tokens)
        gen = ge.evaluate(codec, per_token).as_dict()
    stats = coded.stats
    out: dict[str, Any] = {
        "model": args.model, "split": args.split, "codec": codec.name, "params": codec.params,
        "ppl_baseline": base.ppl, "ppl": coded.ppl,
        "ppl_increase_pct": increase_pct(coded.ppl, base.ppl),
        "hellaswag_baseline": hs_base, "hellaswag": hs,
        "kl_mean": cmp.kl, "top1_agreement": cmp.top1_agreement,
        "bits_per_element": stats.bits_per_element, "bytes_per_token": stats.bytes_per_token,
        "overhead_bytes_per_token": stats.overhead / stats.tokens if stats.tokens else 0.0,
        "per_token_bitstreams": per_token, "windows": args.windows, "window": args.window,
        "ppl_tokens": base.tokens, "hellaswag_items": items,
        "hidden_size": edge.hidden_size, "num_layers": edge.num_layers,
        **gen, "min_agreement": args.min_agreement,
    }
    if calibration is not None:
        out["calibration"] = {"target_ppl_increase_pct": args.target_ppl_increase,
                              "windows": calib_n, "confidence": args.confidence,
                              "quality": calibration.quality,
                              "met": calibration.met, "tried": calibration.tried,
                              "min_agreement": args.min_agreement,
                              "gen_prompts": args.calib_gen_prompts}
    out["seconds"] = time.perf_counter() - t0
    return out


def run(args: argparse.Namespace) -> int:
    out = evaluate(args)
    cal = out.get("calibration")
    if cal is not None:
        last = next((t for t in cal["tried"] if t["quality"] == cal["quality"]), None)
        there = ("" if last is None else f": {last['ppl_increase_pct']:+.2f} % there, at most "
                 f"{last['ppl_increase_bound_pct']:+.2f} % on other text with probability "
                 f"{cal['confidence']}")
        print(f"chose {cal['quality']:g} on {cal['windows']} calibration windows{there}"
              + ("" if cal["met"] else f" (TARGET MISSED: no setting meets "
                 f"+{cal['target_ppl_increase_pct']:g} %)"))
    hs = ""
    if out["hellaswag"] is not None:
        hs = (f", HellaSwag {100 * out['hellaswag_baseline']:.1f} -> "
              f"{100 * out['hellaswag']:.1f} % ({out['hellaswag_items']} items)")
    print(f"{out['model']} split {out['split']} {out['codec']} {out['params']}: "
          f"ppl {out['ppl_baseline']:.3f} -> {out['ppl']:.3f} "
          f"({out['ppl_increase_pct']:+.2f} %), KL {out['kl_mean']:.4f} nats, top-1 agreement "
          f"{100 * out['top1_agreement']:.1f} %{hs}; {out['bits_per_element']:.3f} bits/element, "
          f"{out['bytes_per_token']:.1f} B/token")
    if out["gen_agreement"] is not None:
        em = ""
        if out["gen_exact_match"] is not None:
            em = (f", exact match {100 * out['gen_exact_match_baseline']:.1f} -> "
                  f"{100 * out['gen_exact_match']:.1f} % ({out['gen_exact_items']} answers)")
        print(f"generation: agreement {100 * out['gen_agreement']:.1f} %, first divergence "
              f"{out['first_divergence_mean']:.1f} of {out['gen_tokens']} tokens "
              f"({out['gen_prompts']} prompts){em}")
        if out["gen_agreement"] < out["min_agreement"]:
            warn(f"generation agreement {out['gen_agreement']:.3f} is below --min-agreement "
                 f"{out['min_agreement']}")
    write_json(out, args.json, indent=2)
    return 0
