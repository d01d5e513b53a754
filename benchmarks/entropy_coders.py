"""Entropy coders on quantized IF symbols, and the `rans` codec end to end (one thread).

    python benchmarks/entropy_coders.py [--json PATH] [--repeats N] [--samples N]

Part A codes the same symbols (``rint(x / delta) - q_min`` from the rans quantizer, one
stream per sample) with constriction rANS (`splitcomp.codecs.entropy.encode_symbols`: table +
words), pcodec (level 8) and zstd level 1, and reports bits per symbol against the
zero-order Shannon entropy of each stream (side information included) and Msym/s.
Part B runs the `rans` codec (both coders): bits per element (container included), the same
entropy, the modes its cost model picked, and MB/s of fp32 input.

Inputs: ResNet-20 features after layer1/layer2 on real CIFAR-10 test images when the shared
data and weights are present, synthetic half-normal ReLU maps with clustered zeros, and an
LLM-like hidden state (576 wide, 3 channels 100x larger) per token and for a 128-token prefill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pcodec
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp.codecs import DEFAULT_LIMITS  # noqa: E402
from splitcomp.codecs import entropy as ent  # noqa: E402
from splitcomp.codecs.rans import RansCodec, _step  # noqa: E402


def real_features(n: int) -> dict[str, list[np.ndarray]]:
    """ResNet-20 (CIFAR-10) features after layer1 and layer2, one array per image."""
    try:
        from splitcomp.data import load_dataset  # type: ignore[attr-defined]
        from splitcomp.partition import split
        from splitcomp.zoo import create_model

        model = create_model("resnet20", weights="default")
        ds = load_dataset("cifar10", limit=n)
        x = torch.stack([ds[i][0] for i in range(n)])
        out = {}
        for cut in ("layer1", "layer2"):
            head, _ = split(model, cut, (x[:1],))
            with torch.inference_mode():
                f = head(x)[0].numpy()
            out[f"resnet20/{cut} CIFAR-10 1x{'x'.join(map(str, f.shape[1:]))}"] = [
                np.ascontiguousarray(f[i : i + 1]) for i in range(n)
            ]
        return out
    except Exception as e:  # no shared data or weights: say so, use synthetic inputs only
        print(f"# real features unavailable ({e})", file=sys.stderr)
        return {}


def relu_maps(shape: tuple[int, ...], zeros: float, n: int, seed: int) -> list[np.ndarray]:
    """Half-normal values; a fraction ``zeros`` set to 0 in short horizontal runs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.abs(rng.standard_normal(shape)).astype(np.float32)
        flat = x.reshape(-1)
        starts = rng.integers(0, flat.size, int(flat.size * zeros / 4))
        for d in range(4):
            flat[np.minimum(starts + d, flat.size - 1)] = 0
        out.append(x)
    return out


def llm_states(tokens: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = rng.standard_normal((1, tokens, 576)).astype(np.float32)
        h[..., [7, 101, 333]] *= 100.0
        out.append(h)
    return out


def entropy_bits(u: np.ndarray) -> float:
    counts = np.bincount(u)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / u.size)).sum())


def best_time(fn, items: list, repeats: int) -> float:
    """Best wall time over ``repeats`` of calling ``fn(*item)`` for every item."""
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for item in items:
            fn(*item)
        best = min(best, time.perf_counter() - t0)
    return best


def symbols(x: np.ndarray, bits: int, clip: float) -> np.ndarray:
    delta, _, _ = _step(x, bits, clip)
    q = np.rint(x.reshape(-1) * (np.float32(1) / delta)).astype(np.int64)
    return q - q.min()


def coders() -> dict:
    pco_cfg = pcodec.ChunkConfig(compression_level=8)
    zc, zd = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()

    def zstd_enc(u):
        return zc.compress(u.astype(np.uint8 if u.max() < 256 else np.uint16).tobytes())

    return {
        "constriction rANS": (ent.encode_symbols, lambda b, u: ent.decode_symbols(b, u.size)),
        "pcodec-8": (
            lambda u: pcodec.standalone.simple_compress(u.astype(np.uint32), pco_cfg),
            lambda b, u: pcodec.standalone.simple_decompress_into(b, np.empty(u.size, np.uint32)),
        ),
        "zstd-1": (zstd_enc, lambda b, u: zd.decompress(b)),
    }


def part_a(workloads: dict, bits_list: list[int], repeats: int) -> list[dict]:
    rows = []
    for wname, samples in workloads.items():
        for bits in bits_list:
            streams = [symbols(x, bits, 0.99) for x in samples]
            n_sym = sum(u.size for u in streams)
            h = sum(entropy_bits(u) for u in streams)
            for cname, (enc, dec) in coders().items():
                blobs = [enc(u) for u in streams]
                t_enc = best_time(enc, [(u,) for u in streams], repeats)
                t_dec = best_time(dec, list(zip(blobs, streams, strict=True)), repeats)
                size = 8 * sum(len(b) for b in blobs)
                rows.append(
                    {
                        "workload": wname,
                        "bits": bits,
                        "coder": cname,
                        "entropy_bits_per_symbol": h / n_sym,
                        "bits_per_symbol": size / n_sym,
                        "vs_entropy": size / h if h else None,
                        "encode_Msym_s": n_sym / t_enc / 1e6,
                        "decode_Msym_s": n_sym / t_dec / 1e6,
                    }
                )
    return rows


def part_b(workloads: dict, bits_list: list[int], repeats: int) -> list[dict]:
    rows = []
    for wname, samples in workloads.items():
        nbytes = sum(x.nbytes for x in samples)
        elements = sum(x.size for x in samples)
        for bits, coder in [(b, c) for c in ("ans", "pco") for b in bits_list]:
            codec = RansCodec(bits=bits, coder=coder)
            payloads = [codec.encode_array(x) for x in samples]
            t_enc = best_time(codec.encode_array, [(x,) for x in samples], repeats)
            views = [
                (memoryview(p), x.shape, DEFAULT_LIMITS)
                for p, x in zip(payloads, samples, strict=True)
            ]
            t_dec = best_time(codec.decode_array, views, repeats)
            wire = sum(len(codec.encode(torch.from_numpy(x))) for x in samples)
            h = sum(entropy_bits(symbols(x, bits, codec.params["clip"])) for x in samples)
            modes = Counter(
                f"{'runs' if p[0] & 1 else 'dense'}/j={p[0] >> 4}" for p in payloads if p
            )
            rows.append(
                {
                    "workload": wname,
                    "bits": bits,
                    "coder": coder,
                    "bits_per_element": 8 * wire / elements,
                    "payload_bits_per_element": 8 * sum(map(len, payloads)) / elements,
                    "entropy_bits_per_element": h / elements,
                    "encode_MBps": nbytes / t_enc / 1e6,
                    "decode_MBps": nbytes / t_dec / 1e6,
                    "encode_us_per_tensor": t_enc / len(samples) * 1e6,
                    "decode_us_per_tensor": t_dec / len(samples) * 1e6,
                    "modes": dict(modes),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.samples
    workloads = real_features(n)
    workloads["synthetic ReLU 64x16x16, 30 % zeros"] = relu_maps((64, 16, 16), 0.3, n, 1)
    workloads["synthetic ReLU 32x32x16, 20 % zeros"] = relu_maps((32, 32, 16), 0.2, n, 2)
    workloads["LLM-like 1x1x576 (per token)"] = llm_states(1, n, 3)
    workloads["LLM-like 1x128x576 (prefill)"] = llm_states(128, max(2, n // 8), 4)
    bits_list = [2, 4, 8]
    report = {
        "threads": torch.get_num_threads(),
        "coders": part_a(workloads, bits_list, args.repeats),
        "rans": part_b(workloads, bits_list, args.repeats),
    }
    for r in report["coders"]:
        print(
            f"{r['workload'][:38]:38s} b={r['bits']} {r['coder']:18s} "
            f"H={r['entropy_bits_per_symbol']:6.3f} x{r['vs_entropy'] or 0:6.3f} "
            f"enc {r['encode_Msym_s']:6.1f} dec {r['decode_Msym_s']:6.1f} Msym/s"
        )
    for r in report["rans"]:
        print(
            f"{r['workload'][:38]:38s} b={r['bits']} rans/{r['coder']} "
            f"{r['bits_per_element']:6.3f} bits/el "
            f"(H0 {r['entropy_bits_per_element']:6.3f}) enc {r['encode_MBps']:6.1f} "
            f"dec {r['decode_MBps']:6.1f} MB/s  {r['modes']}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
