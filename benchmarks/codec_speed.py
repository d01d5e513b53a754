"""Encode/decode throughput of every codec on one core, against zstd level 1 in the same run.

    python benchmarks/codec_speed.py [--json PATH] [--repeats N]

Inputs: ResNet-20 IFs after layer2 on real CIFAR-10 images when ../shared/data is present
(a synthetic ReLU map of the same shape otherwise), and an LLM-like hidden state with outlier
channels. MB/s are of fp32 input (4 bytes an element). ``bits_vs_entropy`` divides the payload
bits by the zero-order Shannon entropy of the decoded symbols (n * H of the histogram of
reconstructed values): 1.0 means a perfect zero-order coder, < 1 means context modelling won.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402


def real_cifar_features(n: int) -> tuple[str, torch.Tensor] | None:
    try:
        from splitcomp.data import load_dataset  # type: ignore[attr-defined]
        from splitcomp.partition import split
        from splitcomp.zoo import create_model

        model = create_model("resnet20", weights="default")
        ds = load_dataset("cifar10", limit=n)
        x = torch.stack([ds[i][0] for i in range(n)])
        head, _ = split(model, "layer2", (x[:1],))
        with torch.inference_mode():
            return "resnet20/layer2 CIFAR-10", head(x)[0]
    except Exception as e:  # no shared data, no weights: fall back, say so
        print(f"# real features unavailable ({e}); using synthetic", file=sys.stderr)
        return None


def synthetic_relu(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 32, 16, 16, generator=g) * 0.8 - 0.3).relu()


def llm_hidden(tokens: int, width: int = 576) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(1, tokens, width, generator=g)
    h[..., [7, 101, 333]] *= 100.0
    return h


def entropy_bits(y: np.ndarray) -> float:
    _, counts = np.unique(y, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def bench(codec: codecs.Codec, samples: list[torch.Tensor], repeats: int) -> dict:
    blobs = [codec.encode(s) for s in samples]
    nbytes = sum(s.numel() * 4 for s in samples)
    best_enc = best_dec = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in samples:
            codec.encode(s)
        t1 = time.perf_counter()
        for b in blobs:
            codec.decode(b)
        t2 = time.perf_counter()
        best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
    decoded = [codec.decode(b)[0].float().numpy() for b in blobs]
    wire_bits = 8 * sum(len(b) for b in blobs)
    ent = sum(entropy_bits(d) for d in decoded)
    elements = sum(s.numel() for s in samples)
    err = max(
        float(np.abs(d - s.float().numpy()).max()) for d, s in zip(decoded, samples, strict=True)
    )
    return {
        "codec": codec.name,
        "params": codec.params,
        "encode_MBps": nbytes / best_enc / 1e6,
        "decode_MBps": nbytes / best_dec / 1e6,
        "bits_per_element": wire_bits / elements,
        "bits_vs_entropy": wire_bits / ent if ent > 0 else None,
        "max_abs_error": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    real = real_cifar_features(args.samples)
    name, feats = real if real else ("synthetic ReLU 32x16x16", synthetic_relu(args.samples))
    workloads = {
        name + " (per sample)": [feats[i : i + 1] for i in range(len(feats))],
        name + " (batch)": [feats],
        "LLM hidden 1x1x576 (per token)": [llm_hidden(1) for _ in range(64)],
        "LLM hidden 1x128x576 (prefill)": [llm_hidden(128)],
    }
    report = {"threads": torch.get_num_threads(), "workloads": {}}
    for wname, samples in workloads.items():
        rows = [bench(codecs.get("zstd", level=1), samples, args.repeats)]
        rows[0]["codec"] = "zstd-1"
        for cname in codecs.available():
            rows.append(bench(codecs.get(cname), samples, args.repeats))
        ref = rows[0]
        for r in rows:
            r["encode_vs_zstd1"] = r["encode_MBps"] / ref["encode_MBps"]
            r["decode_vs_zstd1"] = r["decode_MBps"] / ref["decode_MBps"]
        report["workloads"][wname] = rows
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
