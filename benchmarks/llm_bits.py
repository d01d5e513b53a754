"""Fewer bits at the same perplexity? The ``tokenwise`` codec with and without a rotation of
the hidden state before quantization, with a predictor across channels (``predict``: the
context's own, :mod:`splitcomp.codecs._tokenwise_predict`), with the predictor and Fisher noise
shaping (``shaped``, or ``shaped:S`` with the Fisher matrix shrunk by ``S``:
:mod:`splitcomp.codecs._tokenwise_shaping`, the matrix from the calibration windows alone), with
both and per-token step allocation (``alloc``, ``alloc:G`` with gain ``G``, ``alloc:G:A`` with
offsets within ``+-A``:
:mod:`splitcomp.codecs._tokenwise_alloc`, fitted on the calibration windows' gradients), the
allocation's context with trellis-coded quantization (``trellis``, ``trellis:G``, ``trellis:G:A``
as ``alloc``: :mod:`splitcomp.codecs._tokenwise_trellis`; its levels sit ~2 higher than the
scalar ones at the same bits), the trellis context calibrated on, and coding, residuals against a
per-channel guess from the previous decoded token (``ptrellis``, as ``trellis``; what
:mod:`splitcomp.codecs._tokenwise_temporal` does inside the codec), and a screen of
previous-token prediction (issue #13).

    python benchmarks/llm_bits.py [--levels 2,0,-2,-4,-6] [--variants none,block_hadamard,...]
                                  [--json PATH]

Protocol (one run, every variant on the same tokens): WikiText-2 valid is tokenized whole and
cut into ``--window``-token windows. Windows ``0 .. calib-1`` calibrate each variant's session
context (on *its own* rotated states); the next ``--choose-windows`` choose, per variant, the
lowest-rate level whose perplexity increase is at most ``--target`` percent; two disjoint
later parts (``--heldout`` first windows, ``--heldout-windows`` each) report every level.
Every token is its own bitstream through the real codec (container header included, as
``eval-lm`` counts it: each window a session, its first stream full, the rest session
streams),
decoded, rotated back, and run through the server half.

Rotations (orthonormal, seeded, applied on the edge before the codec, inverted on the server):

* ``block_hadamard``: random signs, a fixed random permutation, then a Sylvester-Hadamard
  transform of size 64 on each of the H / 64 blocks (QuaRot's spreading, block-diagonal);
* ``kron``: random signs, then ``H_64 (x) Q`` with ``Q`` a random orthogonal (H / 64)-square
  matrix: every output mixes every channel;
* ``haar``: a dense Haar-random orthogonal matrix (the most mixing any rotation does).

Previous-token prediction is screened first (cheap): the lag-1 correlation of each channel at
the cut, and how much of the hidden state's variance a linear predictor from the previous
token (fitted on the calibration windows, judged on a held-out part) removes, with the
high-rate entropy saving that implies (``0.5 log2`` of the residual to original variance).

Generation agreement (``--gen-prompts``): the split model's greedy continuation with each
setting against the whole model's, over the first prompts of the package's prompt file.
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

from splitcomp import codecs  # noqa: E402
from splitcomp.codecs._tokenwise_alloc import MAX_OFFSET  # noqa: E402
from splitcomp.codecs.compact import session_stream  # noqa: E402
from splitcomp.codecs.container import learn_template  # noqa: E402
from splitcomp.codecs.tokenwise import GAIN, TokenwiseCodec, calibrate, fit_allocation  # noqa: E402
from splitcomp.llm.gen_eval import GenEval, report_prompts  # noqa: E402
from splitcomp.llm.halves import EdgeHalf, ServerHalf  # noqa: E402
from splitcomp.llm.hidden_wire import overhead_bytes  # noqa: E402
from splitcomp.llm.text import _read_text, default_wikitext, load_lm  # noqa: E402
from splitcomp.llm.tokenwise_calibration import fisher_and_traces  # noqa: E402

#: a predicting variant predicts tokens from this position of a sequence on
PRED_FROM = 2


# -- rotations ----------------------------------------------------------------------------------
def hadamard(n: int) -> np.ndarray:
    """Orthonormal Sylvester-Hadamard matrix of size ``n`` (a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def haar_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def rotation(kind: str, width: int, seed: int, block: int = 64) -> np.ndarray | None:
    """The matrix ``R`` (width, width), orthonormal, such that a row ``x`` is sent as ``x @ R``
    (and recovered as ``y @ R.T``); None for ``none``."""
    if kind == "none":
        return None
    rng = np.random.default_rng(seed)
    if kind == "haar":
        return haar_orthogonal(width, rng)
    if width % block:
        raise ValueError(f"width {width} is not a multiple of the block {block}")
    signs = np.diag(rng.choice([-1.0, 1.0], width))
    h = hadamard(block)
    if kind == "block_hadamard":
        perm = np.eye(width)[:, rng.permutation(width)]
        return signs @ perm @ np.kron(np.eye(width // block), h)
    if kind == "kron":
        return signs @ np.kron(haar_orthogonal(width // block, rng), h)
    raise ValueError(f"unknown rotation {kind!r}")


# -- coding through the real codec --------------------------------------------------------------
class Coded:
    """One variant at one level: rotate (or subtract the prediction from the previous decoded
    token), code each token as its own bitstream, decode, undo; counts every byte. Stateful
    with a predictor: :meth:`reset` at the start of every sequence."""

    def __init__(self, codec: codecs.Codec, rot: np.ndarray | None,
                 pred: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.codec = codec
        self.rot = None if rot is None else torch.from_numpy(rot).float()
        self.pred = None if pred is None else tuple(torch.from_numpy(v).float() for v in pred)
        self.bytes = self.overhead = self.tokens = 0
        self.reset()

    def reset(self) -> None:
        self.pos, self.prev, self.session = 0, None, {}

    def _guess(self) -> torch.Tensor | float:
        """What both sides predict for the next token (0 for the first two of a sequence:
        the attention sink and the token after it)."""
        if self.pred is None or self.pos < PRED_FROM:
            return 0.0
        a, m = self.pred
        return a * (self.prev - m)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(1, T, H) -> the server's (1, T, H)."""
        y = hidden.float() if self.rot is None else hidden.float() @ self.rot
        out = torch.empty_like(y)
        for t in range(y.shape[1]):
            guess = self._guess()
            # a session's first stream is full, the rest compact (as RemoteLM sends them)
            blob = self.codec.encode((y[:, t : t + 1] - guess).contiguous(),
                                     compact=self.pos > 0)
            if self.pos > 0:
                blob = session_stream(blob)
            else:
                learn_template(self.session, blob)
            self.bytes += len(blob)
            self.overhead += overhead_bytes(blob)
            self.tokens += 1
            (dec,) = codecs.decode(blob, contexts=self.session)
            out[:, t : t + 1] = dec + guess
            self.prev, self.pos = out[0, t], self.pos + 1
        return out if self.rot is None else out @ self.rot.T


def predictor(hidden: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per channel the least-squares factor ``a`` of ``x_t - m ~ a (x_{t-1} - m)`` and the
    mean ``m``, over every window's tokens from :data:`PRED_FROM` on."""
    prev = np.concatenate([h[0, PRED_FROM - 1 : -1].double().numpy() for h in hidden])
    cur = np.concatenate([h[0, PRED_FROM:].double().numpy() for h in hidden])
    m = cur.mean(0)
    a = ((prev - m) * (cur - m)).sum(0) / ((prev - m) ** 2).sum(0)
    return a.astype(np.float32), m.astype(np.float32)


def residuals(hidden: list[torch.Tensor], pred: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The calibration rows a predicting codec sees (exact previous states)."""
    a, m = pred
    rows = []
    for h in hidden:
        x = h[0].double().numpy()
        r = x.copy()
        r[PRED_FROM:] -= a * (x[PRED_FROM - 1 : -1] - m)
        rows.append(r)
    return np.concatenate(rows).astype(np.float32)


def window_eval(server: ServerHalf, ids: torch.Tensor, hidden: torch.Tensor,
                ref_logp: torch.Tensor | None, coded: Coded | None) -> dict[str, float]:
    """NLL sum, predicted tokens, KL sum and top-1 agreements of one window (1, T)."""
    h = hidden if coded is None else coded(hidden)
    logp = F.log_softmax(server.forward_full(h).float(), dim=-1)
    nll = -float(logp[:, :-1].gather(-1, ids[:, 1:, None]).sum())
    out = {"nll": nll, "n": ids.shape[1] - 1, "kl": 0.0, "agree": 0, "pos": ids.shape[1]}
    if ref_logp is not None:
        ref = ref_logp.float()
        out["kl"] = float((ref.exp() * (ref - logp)).sum())
        out["agree"] = int((ref.argmax(-1) == logp.argmax(-1)).sum())
    return out


def part_eval(server: ServerHalf, part: dict[str, Any], coded: Coded | None) -> dict[str, float]:
    """Perplexity (and KL, top-1 agreement against the uncompressed pass) over a part."""
    acc = {"nll": 0.0, "n": 0, "kl": 0.0, "agree": 0, "pos": 0}
    for ids, hidden, ref in zip(part["ids"], part["hidden"], part["ref"], strict=True):
        if coded is not None:
            coded.reset()
        for k, v in window_eval(server, ids, hidden, ref, coded).items():
            acc[k] += v
    res = {"ppl": math.exp(acc["nll"] / acc["n"]), "predicted_tokens": acc["n"]}
    if part["ref"][0] is not None:
        res["kl"] = acc["kl"] / acc["pos"]
        res["top1_agreement"] = acc["agree"] / acc["pos"]
    return res


def make_part(edge: EdgeHalf, server: ServerHalf, ids: np.ndarray, window: int, start: int,
              count: int, with_ref: bool) -> dict[str, Any]:
    """Windows ``start .. start+count`` of the token stream, their edge states and (optionally)
    the uncompressed next-token log-probabilities (float16)."""
    part: dict[str, Any] = {"windows": [start, start + count], "ids": [], "hidden": [], "ref": []}
    for w in range(start, start + count):
        x = torch.from_numpy(ids[w * window : (w + 1) * window].copy())[None]
        h = edge.forward_full(x)
        part["ids"].append(x)
        part["hidden"].append(h)
        part["ref"].append(F.log_softmax(server.forward_full(h).float(), -1).half()
                           if with_ref else None)
    part["base"] = part_eval(server, {**part, "ref": [None] * count}, None)["ppl"]
    return part


# -- previous-token prediction screen -----------------------------------------------------------
def lag_screen(calib: list[torch.Tensor], held: list[torch.Tensor]) -> dict[str, Any]:
    """Lag-1 statistics of the hidden state (every window's first two tokens left out: the
    attention sink and the token right after it)."""
    def pairs(hs: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        xs = [h[0].double().numpy() for h in hs]
        return (np.concatenate([x[1:-1] for x in xs]), np.concatenate([x[2:] for x in xs]))

    prev, cur = pairs(calib)
    mu = cur.mean(0)
    a, b = prev - mu, cur - mu
    rho = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    # linear predictor x_t ~ W [x_{t-1}, 1], ridge, fitted on calibration, judged held out
    xa = np.concatenate([prev, np.ones((prev.shape[0], 1))], 1)
    lam = 1e-2 * np.trace(xa.T @ xa) / xa.shape[1]
    w = np.linalg.solve(xa.T @ xa + lam * np.eye(xa.shape[1]), xa.T @ cur)
    hp, hc = pairs(held)
    res = hc - np.concatenate([hp, np.ones((hp.shape[0], 1))], 1) @ w
    var0 = hc.var(0)
    res_var = res.var(0)
    # per channel, the best scalar prediction from the same channel's previous value
    scal = (a * b).sum(0) / (a * a).sum(0)
    res_s = (hc - mu) - scal * (hp - mu)
    return {
        "calibration_pairs": int(prev.shape[0]), "heldout_pairs": int(hp.shape[0]),
        "lag1_corr_median": float(np.median(rho)), "lag1_corr_mean_abs": float(np.abs(rho).mean()),
        "lag1_corr_quantiles_10_50_90_99": np.quantile(rho, [0.1, 0.5, 0.9, 0.99]).tolist(),
        "channels_corr_over_0.5": int((rho > 0.5).sum()),
        "linear_predictor_energy_removed_heldout": float(1 - res_var.sum() / var0.sum()),
        "linear_predictor_bits_saved_per_element_high_rate":
            float(-0.5 * np.mean(np.log2(res_var / var0))),
        "scalar_predictor_bits_saved_per_element_high_rate":
            float(-0.5 * np.mean(np.log2(res_s.var(0) / var0))),
    }


# -- generation agreement -----------------------------------------------------------------------
@torch.inference_mode()
def generate_coded(gen: GenEval, edge: EdgeHalf, server: ServerHalf, coded: Coded
                   ) -> list[list[int]]:
    """The split model's greedy continuations with every step's states through ``coded``."""
    out = []
    for ids in gen.ids:
        edge.reset()
        coded.reset()
        session = server.new_session()
        step_ids, toks = ids.reshape(1, -1), []
        for _ in range(gen.max_new_tokens):
            logits = session.step(coded(edge.step(step_ids)), last_only=True)
            toks.append(int(logits[0, -1].argmax()))
            if gen.eos is not None and toks[-1] == gen.eos:
                break
            step_ids = torch.tensor([[toks[-1]]])
        out.append(toks)
    edge.reset()
    return out


# -- main ---------------------------------------------------------------------------------------
def crossing(rows: list[dict[str, Any]], target: float, key: str = "ppl_increase_pct"
             ) -> float | None:
    """Bits per element where the (bits, ``key``) curve crosses ``target`` (linear
    interpolation between the two levels around it; the first crossing from the low-rate
    end), None if it does not."""
    pts = sorted((r["bits_per_element"], r[key]) for r in rows)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:], strict=False):
        if p0 >= target >= p1 and p0 != p1:
            return b0 + (b1 - b0) * (p0 - target) / (p0 - p1)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--split", type=int, default=15)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--choose-windows", type=int, default=4)
    ap.add_argument("--heldout", default="100,300", help="first window of each held-out part")
    ap.add_argument("--heldout-windows", type=int, default=6)
    ap.add_argument("--levels", default="4,2,0,-2,-4")
    ap.add_argument("--variants", default="none,block_hadamard,kron,haar")
    ap.add_argument("--target", type=float, default=1.0, help="ppl increase target, percent")
    ap.add_argument("--kl", default="0.01,0.0075,0.005",
                    help="mean KL levels at which to read each curve's bits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-prompts", type=int, default=6)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    t_start = time.time()
    model, tok = load_lm(args.model)
    edge, server = EdgeHalf(model, args.split), ServerHalf(model, args.split)
    ids = np.asarray(tok.encode(_read_text(default_wikitext())), np.int64)
    w = args.window
    calib = make_part(edge, server, ids, w, 0, args.calib_windows, False)
    choose = make_part(edge, server, ids, w, args.calib_windows, args.choose_windows, False)
    starts = [int(s) for s in args.heldout.split(",")]
    ordered = sorted(starts)
    if ordered[0] < args.calib_windows + args.choose_windows or any(
            b - a < args.heldout_windows for a, b in zip(ordered, ordered[1:], strict=False)):
        raise SystemExit("held-out parts must follow the calibration windows and not overlap")
    held = [make_part(edge, server, ids, w, s, args.heldout_windows, True) for s in starts]
    width = calib["hidden"][0].shape[-1]
    result: dict[str, Any] = {
        "model": args.model, "split": args.split, "hidden_size": width, "window": w,
        "text_tokens": int(ids.size),
        "protocol": {
            "calibration_windows": calib["windows"], "choose_windows": choose["windows"],
            "heldout_windows": [p["windows"] for p in held],
            "tokens_per_heldout_part": [args.heldout_windows * (w - 1)
                                        for p in held],
            "choose_tokens": args.choose_windows * (w - 1), "target_pct": args.target,
            "note": "each figure is one bitstream per token (container header included); "
                    "perplexity over every next-token prediction of its part"},
        "baseline_ppl": {"choose": choose["base"], "heldout": [p["base"] for p in held]},
    }
    result["prev_token_screen"] = lag_screen(calib["hidden"], held[0]["hidden"])
    print(json.dumps(result, indent=1), flush=True)
    gen = GenEval(model, tok, args.split, report_prompts(args.gen_prompts), args.gen_tokens) \
        if args.gen_prompts > 0 else None
    levels = [int(v) for v in args.levels.split(",") if v.strip()]
    curves: dict[str, Any] = {}
    fisher = traces = None
    for kind in [v for v in args.variants.split(",") if v]:
        base = kind.split(":")[0]
        pred = predictor(calib["hidden"]) if base in ("prev", "ptrellis") else None
        allocated = base in ("alloc", "trellis", "ptrellis")
        shaped = kind.split(":")[0] == "shaped" or allocated
        rot = rotation("none" if pred or kind == "predict" or shaped else kind, width, args.seed)
        states = torch.cat([h[0] for h in calib["hidden"]]).float()
        if pred and allocated:
            states = torch.from_numpy(residuals(calib["hidden"], pred))
        if rot is not None:
            states = states @ torch.from_numpy(rot).float()
        shaping: dict[str, Any] = {}
        if shaped:
            if fisher is None:
                t0 = time.time()
                fisher, traces = fisher_and_traces(server, calib["hidden"])
                result["fisher_seconds"] = time.time() - t0
            shaping["fisher"] = fisher
            if ":" in kind and not allocated:
                shaping["shaping_shrink"] = float(kind.split(":")[1])
        ctx = calibrate(residuals(calib["hidden"], pred) if pred else states.numpy(),
                        predict=kind == "predict" or shaped,
                        trellis=base in ("trellis", "ptrellis"), **shaping)
        if allocated:
            opts = [float(v) for v in kind.split(":")[1:]]  # alloc|trellis[:gain[:max offset]]
            gain = opts[0] if opts else GAIN
            bound = int(opts[1]) if len(opts) > 1 else MAX_OFFSET
            ctx.alloc = fit_allocation(states.numpy(), traces, ctx.token_codes(states.numpy()),
                                       gain, bound)
            ctx.clear_tables()
        rows, chosen = [], None
        for level in levels:
            t0 = time.time()
            codec = TokenwiseCodec.with_context(ctx, level=level)
            ch = part_eval(server, choose, Coded(codec, rot, pred))
            row: dict[str, Any] = {"level": level, "choose_ppl_increase_pct":
                                   100 * (ch["ppl"] / choose["base"] - 1), "heldout": []}
            for p in held:
                coded = Coded(codec, rot, pred)
                r = part_eval(server, p, coded)
                r["ppl_increase_pct"] = 100 * (r["ppl"] / p["base"] - 1)
                r["bits_per_element"] = 8 * coded.bytes / (coded.tokens * width)
                r["payload_bits_per_element"] = 8 * (coded.bytes - coded.overhead) / (
                    coded.tokens * width)
                row["heldout"].append(r)
            rows.append(row)
            print(f"{kind:15s} level {level:3d}: choose {row['choose_ppl_increase_pct']:+.2f} % | "
                  + " | ".join(f"{r['bits_per_element']:.3f} b/el {r['ppl_increase_pct']:+.2f} % "
                               f"kl {r['kl']:.4f} top1 {r['top1_agreement']:.4f}"
                               for r in row["heldout"])
                  + f" ({time.time() - t0:.0f} s)", flush=True)
        # the walk of lm_eval.choose_quality: from the highest rate down, stop at the first miss
        for row in sorted(rows, key=lambda r: -r["heldout"][0]["bits_per_element"]):
            if row["choose_ppl_increase_pct"] > args.target:
                break
            chosen = row
        entry: dict[str, Any] = {
            "context_bytes": len(ctx.to_bytes()), "levels": rows,
            "chosen_level": None if chosen is None else chosen["level"],
            "bits_at_target_heldout": [crossing([r["heldout"][i] for r in rows], args.target)
                                       for i in range(len(held))],
            "bits_at_kl_heldout": {k: [crossing([r["heldout"][i] for r in rows], float(k), "kl")
                                       for i in range(len(held))]
                                   for k in args.kl.split(",") if k}}
        if gen is not None:  # at the chosen level, else (target missed) the highest rate
            at = chosen or max(rows, key=lambda r: r["heldout"][0]["bits_per_element"])
            coded = Coded(TokenwiseCodec.with_context(ctx, level=at["level"]), rot, pred)
            q = gen.compare(generate_coded(gen, edge, server, coded))
            entry["generation_at_chosen"] = {"level": at["level"], "agreement": q.agreement,
                                             "first_divergence_mean": q.first_divergence_mean,
                                             "prompts": q.prompts, "new_tokens": q.tokens}
        curves[kind] = entry
        print(f"{kind}: chosen level {entry['chosen_level']}, bits at +{args.target} % "
              f"(held-out parts) {entry['bits_at_target_heldout']}, at KL "
              f"{entry['bits_at_kl_heldout']}, "
              f"generation {entry.get('generation_at_chosen')}", flush=True)
    result["tokenwise_curves"] = curves
    result["seconds"] = time.time() - t_start
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
