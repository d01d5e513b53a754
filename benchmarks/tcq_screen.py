"""Screen for issue #13: would trellis-coded (dependent) quantization save bits in ``tokenwise``?

Entropy-coded scalar quantization (ECSQ, what ``tokenwise`` does per channel) stays ~0.25 bit
per element above the rate-distortion bound at high rate (the 1.53 dB of a cube's space
filling); trellis-coded quantization recovers part of it. This screen measures, on i.i.d.
unit-variance Gaussian and Laplacian sources (the post-predictor residuals of the hidden state
are peaked, between the two), the rate a 4-state dependent quantizer (two interleaved
quantizers ``Q0 = 2kD`` and ``Q1 = (2k - sgn k) D``, the state moving with each index's parity;
Viterbi search on ``e^2 + lambda bits``) needs for the mean squared error ECSQ reaches at a
given rate, with two entropy models for its indices:

* ``ideal``: each quantizer's empirical index distribution (what an adaptive coder would
  approach);
* ``modeled``: cell masses of the true density (``Q0``'s cells ``[(2k-1)D, (2k+1)D]``,
  ``Q1``'s its nearest-point cells), what a context's static tables could derive without
  seeing the trellis's choices.

ECSQ: step ``s``, rounding offset ``theta`` (a dead zone, as ``tokenwise``), indices'
empirical entropy. Both reconstruct at their grid points. One run, seeded; a saving is the
ECSQ rate minus the trellis rate at equal MSE (log-MSE interpolated along each frontier).

    python benchmarks/tcq_screen.py [--samples 200000] [--rates 2.0,2.3,2.6] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numba
import numpy as np

NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)  # state, index parity -> state
QUANTIZER = np.array([0, 0, 1, 1], np.int64)  # which quantizer a state uses
SPAN = 4000  # indices -SPAN .. SPAN


@numba.njit(cache=True)
def _point(q: int, k: int, d: float) -> float:
    if q == 0:
        return 2.0 * k * d
    return (2.0 * k - (1 if k > 0 else (-1 if k < 0 else 0))) * d


@numba.njit(cache=True)
def viterbi(x, d, lam, bits0, bits1):  # pragma: no cover - compiled
    """Indices and quantizers of the 4-state trellis path minimising sum e^2 + lam bits."""
    n = x.size
    inf = 1e300
    cost = np.full(4, inf)
    cost[0] = 0.0
    back = np.zeros((n, 4), np.int64)
    kept = np.zeros((n, 4), np.int64)
    for i in range(n):
        new = np.full(4, inf)
        for s in range(4):
            if cost[s] >= inf:
                continue
            q = QUANTIZER[s]
            u = x[i] / d
            kc = int(np.floor(u / 2.0)) if q == 0 else int(np.floor((u + np.sign(u)) / 2.0))
            for k in range(kc - 1, kc + 3):
                e = x[i] - _point(q, k, d)
                j = min(max(k + SPAN, 0), 2 * SPAN)
                c = cost[s] + e * e + lam * (bits0[j] if q == 0 else bits1[j])
                ns = NEXT[s, k & 1]
                if c < new[ns]:
                    new[ns] = c
                    back[i, ns] = s
                    kept[i, ns] = k
        cost = new
    s = int(np.argmin(cost))
    ks = np.zeros(n, np.int64)
    qs = np.zeros(n, np.int64)
    for i in range(n - 1, -1, -1):
        ks[i] = kept[i, s]
        s = back[i, s]
        qs[i] = QUANTIZER[s]
    return ks, qs


def entropy(k: np.ndarray) -> float:
    _, c = np.unique(k, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def empirical_bits(k: np.ndarray) -> np.ndarray:
    c = np.bincount(np.clip(k + SPAN, 0, 2 * SPAN), minlength=2 * SPAN + 1) + 0.01
    return -np.log2(c / c.sum())


def modeled_bits(d: float, cdf) -> tuple[np.ndarray, np.ndarray]:
    """-log2 of each index's cell mass under ``cdf``, for ``Q0`` and ``Q1``."""
    k = np.arange(-SPAN, SPAN + 1, dtype=np.float64)
    p0 = cdf((2 * k + 1) * d) - cdf((2 * k - 1) * d)
    pts = np.where(k == 0, 0.0, (2 * k - np.sign(k)) * d)
    lo = np.where(k == 0, -d / 2, np.where(k > 0, pts - np.where(k == 1, d / 2, d), pts - d))
    hi = np.where(k == 0, d / 2, np.where(k < 0, pts + np.where(k == -1, d / 2, d), pts + d))
    p1 = cdf(hi) - cdf(lo)
    out = []
    for p in (p0, p1):
        p = np.maximum(p, 1e-12)
        out.append(-np.log2(p / p.sum()))
    return out[0], out[1]


def sources(n: int, seed: int):
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal(n)
    lap = rng.laplace(size=n) / math.sqrt(2)
    phi = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))

    def lap_cdf(v):
        return 0.5 + 0.5 * np.sign(v) * (1 - np.exp(-np.abs(v) * math.sqrt(2)))
    return {"gaussian": (gauss, phi), "laplacian": (lap, lap_cdf)}


def frontier(points: list[tuple[float, float]]) -> np.ndarray:
    """(rate, mse) points on the lower convex-ish frontier, by increasing rate."""
    out, best = [], math.inf
    for rate, mse in sorted(points):
        if mse < best:
            out.append((rate, mse))
            best = mse
    return np.array(out)


def rate_at(front: np.ndarray, mse: float) -> float:
    order = np.argsort(np.log(front[:, 1]))
    return float(np.interp(math.log(mse), np.log(front[order, 1]), front[order, 0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--rates", default="2.0,2.3,2.6")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result: dict = {"samples": args.samples, "seed": args.seed, "sources": {}}
    for name, (x, cdf) in sources(args.samples, args.seed).items():
        sq = []
        for s in np.geomspace(0.3, 1.6, 40):
            for theta in (0.0, 0.1, 0.2, 0.3):
                k = np.sign(x) * np.floor(np.abs(x) / s + 0.5 - theta)
                sq.append((entropy(k), float(np.mean((x - k * s) ** 2))))
        ideal, modeled = [], []
        for d in np.geomspace(0.15, 0.8, 24):
            for lam_rel in (0.0, 0.02, 0.05, 0.1):
                lam = lam_rel * 16 * d * d
                b0, b1 = modeled_bits(d, cdf)
                ks, qs = viterbi(x, d, lam, b0, b1)
                err = x - np.where(qs == 0, 2 * ks * d, (2 * ks - np.sign(ks)) * d)
                mse = float(np.mean(err ** 2))
                modeled.append((float((b0[ks[qs == 0] + SPAN].sum() + b1[ks[qs == 1] + SPAN].sum())
                                      / x.size), mse))
                for _ in range(2):  # tables follow the path's own statistics
                    b0, b1 = empirical_bits(ks[qs == 0]), empirical_bits(ks[qs == 1])
                    ks, qs = viterbi(x, d, lam, b0, b1)
                err = x - np.where(qs == 0, 2 * ks * d, (2 * ks - np.sign(ks)) * d)
                rate = (entropy(ks[qs == 0]) * np.sum(qs == 0)
                        + entropy(ks[qs == 1]) * np.sum(qs == 1)) / x.size
                ideal.append((float(rate), float(np.mean(err ** 2))))
        fs, fi, fm = frontier(sq), frontier(ideal), frontier(modeled)
        rows = []
        for r in [float(v) for v in args.rates.split(",")]:
            mse = float(np.exp(np.interp(r, fs[:, 0], np.log(fs[:, 1]))))
            rows.append({"ecsq_rate": r, "mse": mse,
                         "saving_ideal_tables": r - rate_at(fi, mse),
                         "saving_modeled_tables": r - rate_at(fm, mse)})
            print(f"{name}: ECSQ {r:.2f} bits (mse {mse:.4f}); 4-state trellis saves "
                  f"{rows[-1]['saving_ideal_tables']:.3f} (ideal tables), "
                  f"{rows[-1]['saving_modeled_tables']:.3f} (modeled tables)", flush=True)
        result["sources"][name] = rows
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
