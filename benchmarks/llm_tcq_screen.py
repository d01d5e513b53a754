"""Screen for issue #13: trellis-coded (dependent) quantization inside the ``tokenwise`` codec,
on the real model, before building it into the codec.

``benchmarks/tcq_screen.py`` measured on i.i.d. sources that a 4-state dependent quantizer
saves ~0.06-0.14 bit per element at 2-2.6 bits over entropy-coded scalar quantization. Here
the trellis runs inside the codec's own loop over a token's channels: the closed-loop
predictor and the Fisher noise shaping of the context (``calibrate-lm``'s default) feed each
channel's target from the *decoded* earlier channels, so every trellis state keeps its own
decoded history (per-survivor processing). Each token keeps the codec's scale code, level
offset and steps ``d``; in units of ``d`` the two quantizers are ``Q0 = k`` and
``Q1 = k - sgn(k) / 2`` (the union's points half a step apart), the state moving with each
index's parity; the path minimises ``sum (u - point)^2 + lambda bits``.

Rates are model bits (``-log2`` of each symbol's probability) under tables derived from the
context's knots as the codec derives its own, for both: the codec's scalar symbols under its
tables, the trellis's indices under ``Q0``/``Q1`` cell masses (``Q0``: ``[k - 1/2, k + 1/2)``;
``Q1``: its nearest-point cells), every token's container, scale-code and offset cost added
alike (the codec's real bytes are printed beside its model bits). Distortion: the KL of the
server half's next-token distributions, decoded states against uncompressed, over held-out
windows the context never saw. A saving is read at equal KL (interpolated between levels).

    python benchmarks/llm_tcq_screen.py --context CTX [--heldout 100,300] [--lambdas 0,0.02]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_bits import crossing, make_part  # noqa: E402

from splitcomp.codecs.tokenwise import TokenwiseCodec, get_context, load_context_file  # noqa: E402
from splitcomp.llm.halves import EdgeHalf, ServerHalf  # noqa: E402
from splitcomp.llm.text import _read_text, default_wikitext, load_lm  # noqa: E402

NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
QUANT = np.array([0, 0, 1, 1], np.int64)
KMAX = 64  # indices -KMAX .. KMAX in the screen's tables (beyond: escape-priced)
#: what every token costs beside its symbols, for both (container 9 bytes, ~4 bits of scale
#: code, ~3.5 bits of level offset): constant, so it moves both curves alike
SIDE_BITS = 72 + 4 + 3.5


@numba.njit(cache=True)
def _point(q, k):
    if q == 0:
        return float(k)
    return k - (0.5 if k > 0 else (-0.5 if k < 0 else 0.0))


@numba.njit(cache=True)
def trellis_row(e, d, a, fb, bits0, bits1, lam):  # pragma: no cover - compiled
    """One token: the decoded values minus centre (C,) and the model bits of the best path."""
    c = e.size
    inf = 1e300
    cost = np.full(4, inf)
    cost[0] = 0.0
    xh = np.zeros((4, c))
    err = np.zeros((4, c))
    nxh = np.zeros((4, c))
    nerr = np.zeros((4, c))
    bits = np.zeros(4)
    nbits = np.zeros(4)
    for j in range(c):
        new = np.full(4, inf)
        src = np.full(4, -1)
        val = np.zeros(4)
        bj = np.zeros(4)
        for s in range(4):
            if cost[s] >= inf:
                continue
            p = 0.0
            t = e[j]
            for m in range(j):
                p += xh[s, m] * a[j, m]
                t += err[s, m] * fb[j, m]
            u = (t - p) / d[j]
            q = QUANT[s]
            kc = int(np.floor(u)) if q == 0 else int(np.floor(u + 0.5 * np.sign(u)))
            for k in range(kc - 1, kc + 3):
                r = u - _point(q, k)
                idx = min(max(k + KMAX, 0), 2 * KMAX)
                b = bits0[j, idx] if q == 0 else bits1[j, idx]
                cc = cost[s] + r * r + lam * b
                ns = NEXT[s, k & 1]
                if cc < new[ns]:
                    new[ns] = cc
                    src[ns] = s
                    val[ns] = p + _point(q, k) * d[j]
                    bj[ns] = b
        for ns in range(4):
            s = src[ns]
            if s < 0:
                continue
            nxh[ns, :j] = xh[s, :j]
            nerr[ns, :j] = err[s, :j]
            nxh[ns, j] = val[ns]
            nerr[ns, j] = e[j] - val[ns]
            nbits[ns] = bits[s] + bj[ns]
        xh, nxh = nxh, xh
        err, nerr = nerr, err
        bits, nbits = nbits.copy(), bits
        cost = new
    best = int(np.argmin(cost))
    return xh[best].copy(), bits[best]


def cdf_rows(ctx, width: float, z_edges: np.ndarray) -> np.ndarray:
    """Each channel's CDF (C, n) at ``z_edges * width`` (the context's piecewise-linear one)."""
    return np.stack([np.interp(z_edges * width, ctx.knots[j], ctx.p_grid)
                     for j in range(ctx.channels)])


def trellis_bits(ctx, width: float) -> tuple[np.ndarray, np.ndarray]:
    """-log2 cell masses (C, 2 KMAX + 1) of ``Q0`` and ``Q1`` indices at step ``width`` (z)."""
    k = np.arange(-KMAX, KMAX + 1, dtype=np.float64)
    e0 = np.concatenate([k - 0.5, [KMAX + 0.5]])
    c0 = cdf_rows(ctx, width, e0)
    p0 = np.diff(c0, axis=1)
    pts = np.where(k == 0, 0.0, k - 0.5 * np.sign(k))
    lo = np.where(k == 0, -0.25, np.where(k == 1, 0.25, np.where(k > 0, pts - 0.5, pts - 0.5)))
    hi = np.where(k == 0, 0.25, np.where(k == -1, -0.25, np.where(k < 0, pts + 0.5, pts + 0.5)))
    p1 = cdf_rows(ctx, width, hi) - cdf_rows(ctx, width, lo)
    out = []
    for p in (p0, p1):
        p = p.clip(0) + 1e-6
        out.append(-np.log2(p / p.sum(axis=1, keepdims=True)))
    return out[0], out[1]


def scalar_bits(ctx, key: tuple, q: np.ndarray) -> float:
    """Model bits of one row's scalar symbols under the codec's own tables."""
    total = 0.0
    for t in ctx.tables_at(key):
        qs = q[t.channels]
        sym = np.where(np.abs(qs) > t.k, 2 * t.k + 1, qs + t.k).astype(np.int64)
        total += float(-np.log2(t.probs[np.arange(len(sym)), sym]).sum())
    return total


class Coder:
    """Codes every token of a window (1, T, C) one of two ways, counting model bits."""

    def __init__(self, ctx, level: int, trellis: bool, lam: float) -> None:
        self.ctx, self.level, self.trellis, self.lam = ctx, level, trellis, lam
        self.codec = TokenwiseCodec.with_context(ctx, level=level)
        self.bits = self.real_bytes = 0.0
        self.tokens = 0
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        h = hidden[0].float().numpy()
        codes, offsets, d, q = self.codec._quantize(h)
        out = np.empty_like(h)
        a = ctx.pred if ctx.pred is not None else np.zeros((ctx.channels, ctx.channels))
        fb = ctx.shaping if ctx.shaping is not None else np.zeros_like(a)
        for t in range(h.shape[0]):
            lv = self.level + (0 if offsets is None else int(offsets[t]))
            key = ctx.table_key(lv, int(codes[t]))
            if not self.trellis:
                self.bits += scalar_bits(ctx, key, q[t]) + SIDE_BITS
                blob = self.codec.encode(torch.from_numpy(h[t : t + 1][None]).contiguous(),
                                         compact=t > 0)
                self.real_bytes += len(blob)
                out[t] = ctx.reconstruct(q[t : t + 1], d[t : t + 1])[0]
            else:
                if key not in self._tables:
                    self._tables[key] = trellis_bits(ctx, ctx._width(key))
                b0, b1 = self._tables[key]
                xh, nbits = trellis_row((h[t] - ctx.mu).astype(np.float64),
                                        d[t].astype(np.float64), a, fb, b0, b1, self.lam)
                self.bits += nbits + SIDE_BITS
                out[t] = ctx.mu + xh
            self.tokens += 1
        return torch.from_numpy(out)[None]


def kl_of(server: ServerHalf, part: dict[str, Any], coder: Coder) -> float:
    kl = pos = 0.0
    for hidden, ref in zip(part["hidden"], part["ref"], strict=True):
        logp = F.log_softmax(server.forward_full(coder(hidden)).float(), -1)
        r = ref.float()
        kl += float((r.exp() * (r - logp)).sum())
        pos += hidden.shape[1]
    return kl / pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", required=True, help="a calibrate-lm context file")
    ap.add_argument("--heldout", default="100,300")
    ap.add_argument("--heldout-windows", type=int, default=6)
    ap.add_argument("--levels", default="4,2,0")
    ap.add_argument("--trellis-levels", default="6,4,2")
    ap.add_argument("--lambdas", default="0,0.02")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    ctx = get_context(load_context_file(args.context))
    model, tok = load_lm("smollm2")
    edge, server = EdgeHalf(model, 15), ServerHalf(model, 15)
    ids = np.asarray(tok.encode(_read_text(default_wikitext())), np.int64)
    held = [make_part(edge, server, ids, 512, int(s), args.heldout_windows, True)
            for s in args.heldout.split(",")]
    width = ctx.channels
    result: dict[str, Any] = {"context": args.context, "heldout": args.heldout, "curves": {}}
    runs = [("scalar", 0.0, args.levels)] + [
        (f"trellis:{lam}", float(lam), args.trellis_levels) for lam in args.lambdas.split(",")]
    for name, lam, levels in runs:
        rows = []
        for level in [int(v) for v in levels.split(",")]:
            per_part = []
            for part in held:
                coder = Coder(ctx, level, name != "scalar", lam)
                kl = kl_of(server, part, coder)
                row = {"kl": kl, "bits_per_element": coder.bits / (coder.tokens * width)}
                if name == "scalar":
                    row["real_bits_per_element"] = 8 * coder.real_bytes / (coder.tokens * width)
                per_part.append(row)
            rows.append({"level": level, "heldout": per_part})
            print(f"{name} level {level}: " + " | ".join(
                f"{r['bits_per_element']:.3f} b/el kl {r['kl']:.4f}" for r in per_part)
                + f"  ({time.time() - t0:.0f} s)", flush=True)
        at = {f"bits_at_kl_{k}": [crossing([r["heldout"][i] for r in rows], k, "kl")
                                  for i in range(len(held))] for k in (0.01, 0.0075)}
        result["curves"][name] = {"levels": rows, **at}
        print(f"{name}: {at}", flush=True)
    result["seconds"] = time.time() - t0
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
