"""Every registered codec on real SmolLM2 hidden states at a cut: rate, perplexity, speed.

    python benchmarks/llm_codecs.py [--split 15] [--windows 4] [--json PATH] [--quick]

The edge runs once over WikiText-2 windows; each token's hidden state is coded as its own
bitstream (what a decode step sends), so bytes per token include one container header each.
Perplexity is teacher-forced over the same windows for every setting. Also printed: the
hidden-state statistics that decide what a codec needs (outlier channels, the first token),
and a *simulated* scheme (no bitstream, estimated bits) that shows where the rate could go:
one uniform step per token, unbounded symbols, a static entropy model (global or per channel).
The ``tokenwise`` codec is that scheme made real: it is calibrated first on ``--calib-windows``
windows from the end of the text (its session context, sent once: its bytes are reported apart)
and then run at each of ``--tokenwise-levels``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.llm.halves import EdgeHalf, ServerHalf  # noqa: E402
from splitcomp.llm.hidden_wire import decode_hidden, encode_hidden, overhead_bytes  # noqa: E402
from splitcomp.llm.lm_eval import (  # noqa: E402
    EdgeBatch,
    edge_pass,
    increase_pct,
    perplexity,
    token_logprobs,
)
from splitcomp.llm.text import default_wikitext, load_lm, token_windows  # noqa: E402

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}), ("fp16", {}), ("bf16", {}), ("zstd", {}),
    ("int8", {}), ("int8", {"per_channel": True, "axis": -1}),
    ("blockwise8", {"block": 64}), ("blockwise8", {"block": 16}),
    *[("rans", {"bits": b}) for b in (3, 4, 5, 6, 8)],
    *[("rans", {"bits": b, "clip": 1.0}) for b in (4, 6)],
    *[("slicer", {"quality": q, "axis": -1}) for q in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)],
    *[("slicer", {"quality": q}) for q in (0.5, 1.0)],
]
QUICK = {("fp16", ()), ("int8", ()), ("blockwise8", (("block", 64),)), ("rans", (("bits", 4),)),
         ("rans", (("bits", 6),)), ("slicer", (("axis", -1), ("quality", 0.5))),
         ("slicer", (("axis", -1), ("quality", 1.0)))}


def hidden_stats(batches: list[EdgeBatch]) -> dict[str, Any]:
    """Outlier channels and the first token: what makes per-tensor scales fail."""
    h = torch.cat([b.hidden for b in batches], dim=0)  # (W, T, H)
    x = h[:, 1:].reshape(-1, h.shape[-1])  # every token but each window's first
    ch = x.abs().amax(0)
    med = ch.median()
    top = torch.topk(ch, 6)
    tok = x.abs().amax(1)
    return {
        "first_token_absmax": float(h[:, 0].abs().max()),
        "other_tokens_absmax": float(x.abs().max()),
        "median_abs": float(x.abs().median()),
        "token_absmax_median": float(tok.median()),
        "top_channels": top.indices.tolist(),
        "top_channel_absmax_over_median_channel": [round(float(v / med), 1) for v in top.values],
    }


def run_codec(server: ServerHalf, batches: list[EdgeBatch], codec: codecs.Codec
              ) -> dict[str, float]:
    enc = dec = 0.0
    nll, count, nbytes, over, tokens = 0.0, 0, 0, 0, 0
    for b in batches:
        t0 = time.perf_counter()
        blobs = encode_hidden(codec, b.hidden)
        t1 = time.perf_counter()
        hidden = decode_hidden(blobs)
        t2 = time.perf_counter()
        enc, dec = enc + t1 - t0, dec + t2 - t1
        nbytes += sum(len(x) for x in blobs)
        over += sum(overhead_bytes(x) for x in blobs)
        tokens += len(blobs)
        lp = token_logprobs(server.forward_full(hidden), b.ids)
        nll -= float(lp.sum())
        count += lp.numel()
    width = batches[0].hidden.shape[-1]
    return {"ppl": math.exp(nll / count), "bytes_per_token": nbytes / tokens,
            "bits_per_element": 8 * nbytes / (tokens * width),
            "overhead_bytes_per_token": over / tokens,
            "encode_us_per_token": 1e6 * enc / tokens, "decode_us_per_token": 1e6 * dec / tokens}


def _entropy(q: torch.Tensor) -> float:
    _, counts = torch.unique(q, return_counts=True)
    p = counts.double() / q.numel()
    return float(-(p * p.log2()).sum())


def _cross_entropy(train: torch.Tensor, test: torch.Tensor) -> float:
    """Bits per symbol of ``test`` under ``train``'s histogram (add-half smoothing)."""
    vals, counts = torch.unique(train, return_counts=True)
    table = dict(zip(vals.tolist(), counts.tolist(), strict=True))
    total = counts.sum().item() + 0.5 * (len(table) + 1)
    return sum(-math.log2((table.get(v, 0) + 0.5) / total) for v in test.tolist()) / test.numel()


def run_simulated(server: ServerHalf, batches: list[EdgeBatch], c: float) -> dict[str, float]:
    """A scheme, not a codec: per token one step ``c * median|x|`` (fp16 on the wire), symbols
    ``round(x / step)`` unbounded (outliers cost large symbols, no clipping), each window's
    first token (the attention sink, ~25,000 in one channel) sent as fp16. Rate estimates,
    without container bytes: the symbols under one static histogram for every token and
    channel, and under one static histogram per channel fitted on the other half of the
    windows (held out): what an entropy coder with a shared, pre-agreed model would reach."""
    nll, count, syms = 0.0, 0, []
    for b in batches:
        x = b.hidden[0]
        step = (c * x.abs().median(dim=1, keepdim=True).values).half().float()
        q = torch.round(x / step)
        rec = q * step
        rec[0] = x[0].half().float()
        syms.append(q[1:])
        lp = token_logprobs(server.forward_full(rec[None]), b.ids)
        nll -= float(lp.sum())
        count += lp.numel()
    q = torch.cat(syms)
    tokens, width = q.shape[0] + len(batches), q.shape[1]
    side = (16 * tokens + 16 * width * len(batches)) / (tokens * width)  # steps + first tokens
    half = len(syms) // 2 or 1
    train, test = torch.cat(syms[:half]), torch.cat(syms[half:]) if len(syms) > 1 else q
    per_channel = sum(_cross_entropy(train[:, j], test[:, j]) for j in range(width)) / width
    return {"ppl": math.exp(nll / count), "est_bits_global_model": _entropy(q) + side,
            "est_bits_per_channel_model": per_channel + side}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--split", type=int, default=15)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a few settings only")
    ap.add_argument("--no-simulate", action="store_true")
    ap.add_argument("--calib-windows", type=int, default=4,
                    help="tokenwise: calibration windows, from the end of the text (4)")
    ap.add_argument("--tokenwise-levels", default="4,2,0,-2",
                    help="tokenwise: comma-separated levels (step 2**(level/8)); '' skips")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_lm(args.model)
    edge, server = EdgeHalf(model, args.split), ServerHalf(model, args.split)
    windows = token_windows(tok, default_wikitext(), args.window, args.windows)
    batches = [edge_pass(edge, w[None]) for w in windows]
    stats = hidden_stats(batches)
    print(json.dumps(stats))
    base = perplexity(server, batches, None).ppl
    print(f"baseline ppl {base:.4f} ({args.windows} x {args.window} tokens, split {args.split})")
    rows = []
    for name, params in CONFIGS:
        if name not in codecs.available():
            continue
        if args.quick and (name, tuple(sorted(params.items()))) not in QUICK:
            continue
        codec = codecs.get(name, **params)
        r = {"codec": name, "params": codec.params, **run_codec(server, batches, codec)}
        r["ppl_increase_pct"] = increase_pct(r["ppl"], base)
        rows.append(r)
        print(f"{name:10s} {json.dumps(params):34s} {r['bits_per_element']:6.2f} b/el "
              f"{r['bytes_per_token']:7.1f} B/tok (hdr+crc {r['overhead_bytes_per_token']:4.1f}) "
              f"ppl {r['ppl']:8.3f} ({r['ppl_increase_pct']:+7.2f} %) "
              f"enc {r['encode_us_per_token']:6.0f} us dec {r['decode_us_per_token']:6.0f} us",
              flush=True)
    levels = [int(v) for v in args.tokenwise_levels.split(",") if v.strip()]
    if "tokenwise" in codecs.available() and levels:
        from splitcomp.codecs.tokenwise import TokenwiseCodec
        from splitcomp.llm.tokenwise_calibration import calibrate_edge, tail_windows

        ctx = calibrate_edge(edge, tail_windows(tok, default_wikitext(), args.window,
                                                args.calib_windows))
        ctx_bytes = len(ctx.to_bytes())
        for level in levels[:2] if args.quick else levels:
            codec = TokenwiseCodec.with_context(ctx, level=level)
            r = {"codec": "tokenwise", "params": codec.params, "context_bytes": ctx_bytes,
                 **run_codec(server, batches, codec)}
            r["ppl_increase_pct"] = increase_pct(r["ppl"], base)
            rows.append(r)
            print(f"tokenwise  level={level:<3d} (context {ctx_bytes} B once)      "
                  f"{r['bits_per_element']:6.2f} b/el {r['bytes_per_token']:7.1f} B/tok (hdr+crc "
                  f"{r['overhead_bytes_per_token']:4.1f}) ppl {r['ppl']:8.3f} "
                  f"({r['ppl_increase_pct']:+7.2f} %) enc {r['encode_us_per_token']:6.0f} us "
                  f"dec {r['decode_us_per_token']:6.0f} us", flush=True)
    sims = []
    if not args.no_simulate:
        for c in (0.5, 0.7, 0.85, 1.0, 1.4):
            r = {"step_over_median_abs": c, **run_simulated(server, batches, c)}
            r["ppl_increase_pct"] = increase_pct(r["ppl"], base)
            sims.append(r)
            print(f"simulated step {c} x median|x| per token: ~{r['est_bits_global_model']:.2f} "
                  f"b/el (one static table), ~{r['est_bits_per_channel_model']:.2f} b/el "
                  f"(static table per channel), ppl {r['ppl']:.3f} "
                  f"({r['ppl_increase_pct']:+.2f} %)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(
            {"model": args.model, "split": args.split, "windows": args.windows,
             "window": args.window, "ppl_baseline": base, "hidden_stats": stats,
             "codecs": rows, "simulated": sims}, indent=2))


if __name__ == "__main__":
    main()
