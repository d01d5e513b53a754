"""Does a setting chosen for a perplexity target hold it on other text? ``eval-lm
--target-ppl-increase`` chooses on one part of WikiText-2 and reports on another; this measures
how often the chosen setting then meets the target, for several ``--confidence`` values
(:func:`splitcomp.llm.lm_eval.increase_bound`), over every ordered pair of blocks of windows.

    python benchmarks/llm_chooser.py --context ctx.sctx [--levels 2,3,4,6] [--blocks 5]
        [--block-windows 32] [--confidences 0.5,0.8,0.9,0.95] [--json PATH]

Protocol: WikiText-2 valid, tokenized whole, cut into 512-token windows; blocks of
``--block-windows`` consecutive windows from the first (``calibrate-lm``'s context comes from
the file's last 32 windows: disjoint for up to 16 blocks of 32). Every window's negative
log-likelihood is measured uncompressed and through the ``tokenwise`` codec at each level
(every token its own bitstream, each window a session, as ``eval-lm`` counts them), once.
For each ordered pair (choose block, report block) and each confidence, the walk of
:func:`~splitcomp.llm.lm_eval.choose_quality` over ``--levels`` (highest rate first, stopping
at the first level whose bound on the choose block exceeds ``--target``) picks a level, and
the report block gives its perplexity increase and bits per element. Reported: each block's
curve (increase and bits per level), each confidence's picks and how many pairs meet the
perplexity target and the bits target. Levels run in ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@functools.cache
def _windows(n: int) -> tuple[Any, list]:
    """SmolLM2's server half at block 15 and the edge's pass over the first ``n`` windows
    (once per worker process: every level a worker measures reuses them)."""
    from splitcomp.llm.halves import EdgeHalf, ServerHalf
    from splitcomp.llm.lm_eval import edge_pass
    from splitcomp.llm.text import default_wikitext, load_lm, token_windows

    model, tok = load_lm("smollm2")
    edge, server = EdgeHalf(model, 15), ServerHalf(model, 15)
    windows = token_windows(tok, default_wikitext(), 512, n)
    return server, [edge_pass(edge, w[None]) for w in windows]


def measure(level: int | None, context: str, n: int) -> dict[str, list]:
    """Each window's NLL, tokens and bytes at ``level`` (None: uncompressed)."""
    import torch

    from splitcomp import codecs
    from splitcomp.codecs.tokenwise import load_context_file
    from splitcomp.llm.lm_eval import perplexity

    torch.set_num_threads(1)
    server, batches = _windows(n)
    codec = None
    if level is not None:
        codec = codecs.get("tokenwise", context=load_context_file(context), level=level)
    with torch.inference_mode():
        res = perplexity(server, batches, codec)
    return {"nll": res.window_nll, "tokens": res.window_tokens,
            "bytes": res.stats.per_message, "elements_per_window": 512 * 576}


def _part(m: dict[str, list], idx: range) -> Any:
    from splitcomp.llm.lm_eval import Perplexity

    nll = [m["nll"][i] for i in idx]
    tok = [m["tokens"][i] for i in idx]
    return Perplexity(sum(nll), sum(tok), window_nll=nll, window_tokens=tok)


def analyse(base: dict, coded: dict[int, dict], blocks: list[range], confidences: list[float],
            target: float, bits_target: float) -> dict[str, Any]:
    from splitcomp.llm.lm_eval import increase_bound, increase_pct

    levels = sorted(coded)  # lowest level = highest rate first, as the chooser walks

    def bits(lv: int, blk: range) -> float:
        return 8 * sum(coded[lv]["bytes"][i] for i in blk) / (
            len(blk) * coded[lv]["elements_per_window"])

    def inc(lv: int, blk: range) -> float:
        return increase_pct(_part(coded[lv], blk).ppl, _part(base, blk).ppl)

    curves = {str(lv): {"ppl_increase_pct": [inc(lv, b) for b in blocks],
                        "bits_per_element": [bits(lv, b) for b in blocks]} for lv in levels}
    out: dict[str, Any] = {"curves_per_block": curves, "by_confidence": {}}
    for conf in confidences:
        picks: dict[int, int | None] = {}
        for c, blk in enumerate(blocks):
            pick = None
            for lv in levels:
                if increase_bound(_part(base, blk), _part(coded[lv], blk), conf) > target:
                    break
                pick = lv
            picks[c] = pick
        pairs = []
        for c, r in itertools.permutations(range(len(blocks)), 2):
            if picks[c] is None:
                pairs.append({"choose": c, "report": r, "level": None})
                continue
            i, b = inc(picks[c], blocks[r]), bits(picks[c], blocks[r])
            pairs.append({"choose": c, "report": r, "level": picks[c], "ppl_increase_pct": i,
                          "bits_per_element": b})
        ok = [p for p in pairs if p["level"] is not None]
        out["by_confidence"][str(conf)] = {
            "picks_per_choose_block": picks,
            "pairs": len(pairs),
            "ppl_target_held": sum(p["ppl_increase_pct"] <= target for p in ok),
            "both_targets_held": sum(p["ppl_increase_pct"] <= target
                                     and p["bits_per_element"] <= bits_target for p in ok),
            "mean_bits_per_element": sum(p["bits_per_element"] for p in ok) / max(len(ok), 1),
            "mean_ppl_increase_pct": sum(p["ppl_increase_pct"] for p in ok) / max(len(ok), 1),
            "pair_results": pairs,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", required=True, help="a tokenwise context file (calibrate-lm)")
    p.add_argument("--levels", default="2,3,4,6")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block-windows", type=int, default=32)
    p.add_argument("--confidences", default="0.5,0.8,0.9,0.95")
    p.add_argument("--target", type=float, default=1.0, help="perplexity increase, %% (1)")
    p.add_argument("--bits-target", type=float, default=2.5, help="bits per element (2.5)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    t0 = time.perf_counter()
    n = a.blocks * a.block_windows
    levels = [int(v) for v in a.levels.split(",")]
    with ProcessPoolExecutor(a.workers) as pool:
        jobs = {lv: pool.submit(measure, lv, a.context, n) for lv in [None, *levels]}
        got = {lv: f.result() for lv, f in jobs.items()}
    blocks = [range(i * a.block_windows, (i + 1) * a.block_windows) for i in range(a.blocks)]
    result = analyse(got[None], {lv: got[lv] for lv in levels}, blocks,
                     [float(v) for v in a.confidences.split(",")], a.target, a.bits_target)
    out = {"context": a.context, "levels": levels, "blocks": a.blocks,
           "block_windows": a.block_windows, "tokens_per_block": a.block_windows * 511,
           "target_ppl_increase_pct": a.target, "bits_target": a.bits_target,
           **result, "seconds": time.perf_counter() - t0}
    text = json.dumps(out, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    summary = {k: {kk: v[kk] for kk in ("picks_per_choose_block", "pairs", "ppl_target_held",
                                         "both_targets_held", "mean_bits_per_element")}
               for k, v in out["by_confidence"].items()}
    print(json.dumps({"curves_per_block": out["curves_per_block"], "summary": summary},
                     indent=1))


if __name__ == "__main__":
    main()
