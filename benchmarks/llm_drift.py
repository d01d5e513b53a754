"""How compression error accumulates over a long greedy generation (SmolLM2, split in the middle).

    python benchmarks/llm_drift.py [--tokens 256] [--prompts 4] [--configs fp16 rans:bits=4]
                                   [--json PATH]

For each codec setting and each prompt (the opening of a WikiText-2 window), greedy generation
through the split model is compared with the uncompressed (fp32) one through the same path
(one by one, fp32 equals the unsplit model token for token; batched decode steps agree with it
to float rounding). Two views, each against position:

* free-running: does the compressed generation emit the same token at position i, and has it
  stayed identical up to i? (Once a token differs the texts part, so this mostly measures
  the first divergence.)
* teacher-forced: fed the uncompressed generation, does the compressed server still choose
  the same next token, and how far (KL) is its distribution? This isolates accumulation: the
  server's KV cache fills with coded hidden states, and any growth of error with position
  shows here. Greedy generations of a small model fall into loops, whose tokens are easy, so
  the same is measured on natural text too (WikiText windows, teacher-forced).

Decode steps of all prompts go through the server together (continuous batching).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.llm.halves import EdgeHalf, ServerHalf  # noqa: E402
from splitcomp.llm.hidden_wire import Wire  # noqa: E402
from splitcomp.llm.text import default_wikitext, load_lm, token_windows  # noqa: E402


def parse_config(spec: str) -> codecs.Codec:
    """``name`` or ``name:k=v,k=v`` -> codec (values typed by the codec's declaration)."""
    name, _, rest = spec.partition(":")
    kinds = {p.name: p.kind for p in codecs.codec_class(name).params_spec}
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kind = kinds[k]
        params[k] = (v.lower() in ("1", "true")) if kind is bool else kind(v)
    return codecs.get(name, **params)


def generate_batch(model, split: int, prompts: list[torch.Tensor], n: int,
                   codec: codecs.Codec) -> tuple[list[list[int]], Wire]:
    """Greedy continuations of every prompt, the server batching their decode steps."""
    server = ServerHalf(model, split)
    edges = [EdgeHalf(model, split) for _ in prompts]
    sessions = [server.new_session() for _ in prompts]
    wire = Wire(codec)
    hidden = [wire.receive(wire.send(e.step(p))) for e, p in zip(edges, prompts, strict=True)]
    out: list[list[int]] = [[] for _ in prompts]
    for i in range(n):
        logits = server.step_batch(sessions, hidden, last_only=True)
        for seq, lg in zip(out, logits, strict=True):
            seq.append(int(lg[0, -1].argmax()))
        if i + 1 < n:
            hidden = [wire.receive(wire.send(e.step(torch.tensor([s[-1]]))))
                      for e, s in zip(edges, out, strict=True)]
    return out, wire


@torch.inference_mode()
def forced_compare(model, split: int, ids: torch.Tensor, start: int, codec: codecs.Codec
                   ) -> tuple[list[bool], list[float]]:
    """Teacher-forced over ``ids`` (1, T): for each position from ``start - 1`` on, does the
    server fed coded hidden states pick the token the uncompressed one picks, and the KL
    divergence (nats) of its next-token distribution from the uncompressed one."""
    edge, server = EdgeHalf(model, split), ServerHalf(model, split)
    hidden = edge.forward_full(ids)
    keep = torch.arange(start - 1, ids.shape[1])
    ref = torch.log_softmax(server.forward_full(hidden, keep)[0].float(), -1)
    wire = Wire(codec)
    got = torch.log_softmax(server.forward_full(wire.receive(wire.send(hidden)), keep)[0].float(),
                            -1)
    kl = (ref.exp() * (ref - got)).sum(-1)
    return (ref.argmax(-1) == got.argmax(-1)).tolist(), kl.tolist()


def buckets(flags, size: int) -> list[float]:
    """Mean over sequences and over each ``size`` positions (``flags``: sequences x positions,
    booleans or numbers)."""
    t = torch.tensor(flags, dtype=torch.float32)
    return [float(f"{float(t[:, i : i + size].mean()):.4g}") for i in range(0, t.shape[1], size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--split", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--bucket", type=int, default=32)
    ap.add_argument("--text-windows", type=int, default=8,
                    help="WikiText windows for the natural-text teacher-forced view")
    ap.add_argument("--text-window", type=int, default=512)
    ap.add_argument("--text-bucket", type=int, default=64)
    ap.add_argument("--configs", nargs="*",
                    default=["fp32", "fp16", "int8", "rans:bits=4", "rans:bits=6,clip=1.0",
                             "slicer:quality=0.7,axis=-1"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_lm(args.model)
    # prompts: the openings of every other WikiText window
    wins = token_windows(tok, default_wikitext(), 512, 2 * args.prompts)
    prompts = [wins[2 * i, : args.prompt_tokens] for i in range(args.prompts)]
    text_windows = token_windows(tok, default_wikitext(), args.text_window, args.text_windows)
    t0 = time.perf_counter()
    ref, ref_wire = generate_batch(model, args.split, prompts, args.tokens, codecs.get("fp32"))
    print(f"reference: {args.prompts} x {args.tokens} tokens in {time.perf_counter() - t0:.0f} s",
          flush=True)
    report: dict[str, Any] = {
        "model": args.model, "split": args.split, "tokens": args.tokens,
        "prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "bucket": args.bucket,
        "text_windows": args.text_windows, "text_window": args.text_window,
        "text_bucket": args.text_bucket,
        "reference_texts": [tok.decode(r[:48]) for r in ref], "codecs": []}
    for spec in args.configs:
        codec = parse_config(spec)
        t0 = time.perf_counter()
        got, wire = generate_batch(model, args.split, prompts, args.tokens, codec)
        same = [[a == b for a, b in zip(g, r, strict=True)] for g, r in zip(got, ref, strict=True)]
        prefix = [[all(s[: i + 1]) for i in range(len(s))] for s in same]
        first = [s.index(False) if not all(s) else None for s in same]
        forced, forced_kl = zip(*[
            forced_compare(model, args.split, torch.cat([p, torch.tensor(r[:-1])])[None],
                           len(p), codec) for p, r in zip(prompts, ref, strict=True)],
            strict=True)
        text, text_kl = zip(*[forced_compare(model, args.split, w[None], 1, codec)
                              for w in text_windows], strict=True)
        row = {
            "codec": codec.name, "params": codec.params,
            "bits_per_element": wire.stats.bits_per_element,
            "bytes_per_token": wire.stats.bytes_per_token,
            "first_divergence": first,
            "free_running_agreement": float(torch.tensor(same, dtype=torch.float).mean()),
            "free_running_agreement_by_bucket": buckets(same, args.bucket),
            "identical_prefix_by_bucket": buckets(prefix, args.bucket),
            "teacher_forced_agreement": float(torch.tensor(forced, dtype=torch.float).mean()),
            "teacher_forced_agreement_by_bucket": buckets(forced, args.bucket),
            "teacher_forced_kl_by_bucket": buckets(forced_kl, args.bucket),
            "text_agreement": float(torch.tensor(text, dtype=torch.float).mean()),
            "text_agreement_by_bucket": buckets(text, args.text_bucket),
            "text_kl_by_bucket": buckets(text_kl, args.text_bucket),
            "seconds": time.perf_counter() - t0,
        }
        report["codecs"].append(row)
        print(f"{spec:28s} {row['bits_per_element']:5.2f} b/el first divergence {first} "
              f"free {row['free_running_agreement']:.3f} forced "
              f"{row['teacher_forced_agreement']:.3f} "
              f"forced by bucket {row['teacher_forced_agreement_by_bucket']}; text "
              f"{row['text_agreement']:.3f} by bucket {row['text_agreement_by_bucket']} "
              f"KL by bucket {row['text_kl_by_bucket']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
