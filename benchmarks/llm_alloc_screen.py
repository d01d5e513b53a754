"""Screen for issue #13: per-token step allocation on top of the shaped ``tokenwise`` codec.

The Fisher information at the cut varies from token to token far more than across channels
(the AM-GM gap of per-token traces is ~0.46 bit per element on SmolLM2): a token whose
next-token distributions barely move deserves a coarser step. The edge cannot compute a
token's Fisher trace (that needs the server half), but it can predict it: a ridge regression
from the token's hidden state ``[x, |x|, 1]`` to the log of its trace, fitted on the
calibration windows. The encoder then codes token ``t`` at ``level + o_t`` with
``o_t = clip(rint(-4 gain (log s_t - mean) / ln 2), -6, 6)`` (a step ``~ s^(-gain/2)``).

The screen that led to the tokenwise context's version 3 (``splitcomp.codecs._tokenwise_alloc``,
measured as a codec by ``llm_bits.py --variants alloc``): it codes each token with the shaped
codec at its own level (every byte counted, as ``llm_bits.py`` counts them) and adds the
empirical entropy of the offsets over the part (what an adaptive offset symbol would cost at
best). Every window's first two tokens (the attention sink) keep offset 0.

``--oracle`` adds the ceiling: offsets from each held-out token's *own* measured log trace
(what no encoder has) instead of the prediction, at each gain. ``--lens`` adds to the ridge's
held-out R^2 the same fit with the token's logit-lens features (the entropy and top
log-probability of ``softmax(norm(x) E^T)`` under the tied embeddings ``E`` the edge holds,
and ``log |x|``), alone and beside ``[x, |x|, 1]``.

    python benchmarks/llm_alloc_screen.py [--gains 0,0.75] [--levels 4,2,0] [--heldout 150,450]
                                          [--oracle] [--lens]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_bits import crossing, make_part  # noqa: E402

from splitcomp.codecs.tokenwise import TokenwiseCodec, calibrate  # noqa: E402
from splitcomp.llm.cache import positions_for  # noqa: E402
from splitcomp.llm.halves import EdgeHalf, ServerHalf  # noqa: E402
from splitcomp.llm.text import _read_text, default_wikitext, load_lm  # noqa: E402
from splitcomp.llm.tokenwise_calibration import fisher_at_cut  # noqa: E402

SKIP, MAX_OFFSET = 2, 6


def token_log_traces(server: ServerHalf, states: list[torch.Tensor], samples: int = 2,
                     seed: int = 7) -> np.ndarray:
    """log of each position's Fisher trace (mean squared gradient norm over ``samples``
    labels drawn from the model), every window's first :data:`SKIP` positions left out."""
    out = []
    for i, h in enumerate(states):
        x = h.detach().to(server.dtype).clone().requires_grad_(True)
        t = x.shape[1]
        with torch.enable_grad():
            logits = server.part(x, positions_for([0], t), server.masks([0], t), None, None)
            logp = torch.log_softmax(logits[0].float(), -1)
            gen = torch.Generator().manual_seed(seed + i)
            y = torch.multinomial(logp.detach().exp(), samples, replacement=True, generator=gen)
            tr = torch.zeros(t, dtype=torch.float64)
            for j in range(samples):
                (g,) = torch.autograd.grad(logp.gather(-1, y[:, j : j + 1]).sum(), x,
                                           retain_graph=j < samples - 1)
                tr += (g[0].double() ** 2).sum(-1)
        out.append(np.log(tr[SKIP:].numpy() / samples + 1e-12))
    return np.concatenate(out)


def features(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.abs(x), np.ones((x.shape[0], 1))], 1)


def fit_ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge weights of ``y ~ features(x)`` and the held-out R^2 of a fit on the first half."""
    a = features(x)
    lam = 0.1 * np.trace(a.T @ a) / a.shape[1]
    half = a.shape[0] // 2
    w = np.linalg.solve(a[:half].T @ a[:half] + lam * np.eye(a.shape[1]), a[:half].T @ y[:half])
    r2 = 1 - float(np.var(y[half:] - a[half:] @ w) / np.var(y[half:]))
    return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y), r2


def lens_features(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Per row: logit-lens entropy and top log-probability (final norm, tied embeddings), and
    ``log |x|``."""
    emb = model.get_input_embeddings().weight.detach().float()
    norm = model.get_decoder().norm
    out = []
    with torch.no_grad():
        for rows in np.array_split(x, max(1, len(x) // 512)):
            logp = torch.log_softmax(norm(torch.from_numpy(rows).float()) @ emb.T, -1)
            out.append(torch.stack([-(logp.exp() * logp).sum(-1), logp.max(-1).values], 1))
    lens = torch.cat(out).double().numpy()
    return np.concatenate([lens, np.log(np.linalg.norm(x, axis=1))[:, None]], 1)


def heldout_r2(a: np.ndarray, y: np.ndarray) -> float:
    """R^2 on the second half of a ridge fit (as :func:`fit_ridge`) on the first half."""
    lam = 0.1 * np.trace(a.T @ a) / a.shape[1]
    half = a.shape[0] // 2
    w = np.linalg.solve(a[:half].T @ a[:half] + lam * np.eye(a.shape[1]), a[:half].T @ y[:half])
    return 1 - float(np.var(y[half:] - a[half:] @ w) / np.var(y[half:]))


def part_eval(server: ServerHalf, part: dict[str, Any], codecs_: dict[int, TokenwiseCodec],
              offset_of, width: int) -> dict[str, float]:
    nbytes = ntok = 0
    offsets: list[int] = []
    kl = pos = 0.0
    for hidden, ref in zip(part["hidden"], part["ref"], strict=True):
        h = hidden[0].float().numpy()
        out = torch.empty_like(hidden.float())
        for t in range(h.shape[0]):
            o = 0 if t < SKIP else offset_of(h[t : t + 1])
            offsets.append(o)
            blob = codecs_[o].encode(torch.from_numpy(h[t : t + 1][None]).contiguous(),
                                     compact=t > 0)
            nbytes += len(blob)
            ntok += 1
            (dec,) = codecs_[o].decode(blob)
            out[0, t] = dec[0, 0]
        logp = F.log_softmax(server.forward_full(out).float(), -1)
        r = ref.float()
        kl += float((r.exp() * (r - logp)).sum())
        pos += h.shape[0]
    _, counts = np.unique(offsets, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return {"bits_per_element": (8 * nbytes + entropy * ntok) / (ntok * width),
            "offset_entropy_bits_per_token": entropy, "kl": kl / pos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--heldout", default="150,450")
    ap.add_argument("--heldout-windows", type=int, default=6)
    ap.add_argument("--levels", default="4,2,0")
    ap.add_argument("--gains", default="0,0.75")
    ap.add_argument("--oracle", action="store_true",
                    help="also offsets from each held-out token's own trace (a ceiling)")
    ap.add_argument("--lens", action="store_true", help="R^2 with logit-lens features too")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = load_lm("smollm2")
    edge, server = EdgeHalf(model, 15), ServerHalf(model, 15)
    ids = np.asarray(tok.encode(_read_text(default_wikitext())), np.int64)
    w = 512
    calib = make_part(edge, server, ids, w, 0, args.calib_windows, False)
    held = [make_part(edge, server, ids, w, int(s), args.heldout_windows, True)
            for s in args.heldout.split(",")]
    x = torch.cat([h[0] for h in calib["hidden"]]).float().numpy()
    ctx = calibrate(x, predict=True, fisher=fisher_at_cut(server, calib["hidden"]))
    xs = np.concatenate([h[0, SKIP:].double().numpy() for h in calib["hidden"]])
    traces = token_log_traces(server, calib["hidden"])
    weights, r2 = fit_ridge(xs, traces)
    mean = float(np.mean(features(xs) @ weights))
    result: dict[str, Any] = {"ridge_r2_heldout_half": r2, "heldout": args.heldout,
                              "curves": {}}
    if args.lens:
        lens = lens_features(model, xs)
        one = np.ones((len(xs), 1))
        result["lens_r2_heldout_half"] = {
            "lens": heldout_r2(np.concatenate([lens, one], 1), traces),
            "x_and_lens": heldout_r2(np.concatenate([features(xs), lens], 1), traces)}
        print(f"R^2 base {r2:.3f}, with lens {result['lens_r2_heldout_half']}", flush=True)
    if args.oracle:
        for part in held:
            part["traces"] = token_log_traces(server, part["hidden"])
    for mode, gain in [(m, float(g)) for m in ["predicted"] + ["oracle"] * args.oracle
                       for g in args.gains.split(",")]:
        def offset_fn(part: dict[str, Any], mode: str = mode, gain: float = gain):
            it = iter(part.get("traces", ()))

            def offset_of(token: np.ndarray) -> int:
                s = (next(it) - float(np.mean(traces)) if mode == "oracle"
                     else float((features(token.astype(np.float64)) @ weights)[0]) - mean)
                return int(np.clip(np.rint(-4 * gain * s / math.log(2)),
                                   -MAX_OFFSET, MAX_OFFSET))
            return offset_of

        name = str(gain) if mode == "predicted" else f"oracle:{gain}"
        rows = []
        for level in [int(v) for v in args.levels.split(",")]:
            codecs_ = {o: TokenwiseCodec.with_context(ctx, level=level + o)
                       for o in range(-MAX_OFFSET, MAX_OFFSET + 1)}
            row = {"level": level, "heldout": [
                part_eval(server, p, codecs_, offset_fn(p), x.shape[1]) for p in held]}
            rows.append(row)
            print(f"{name} level {level}: " + " | ".join(
                f"{r['bits_per_element']:.3f} b/el kl {r['kl']:.4f}" for r in row["heldout"]),
                flush=True)
        result["curves"][name] = {"levels": rows, "bits_at_kl_0.01": [
            crossing([r["heldout"][i] for r in rows], 0.01, "kl") for i in range(len(held))]}
        print(f"{name}: bits at KL 0.01 {result['curves'][name]['bits_at_kl_0.01']}", flush=True)
    result["seconds"] = time.time() - t0
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
