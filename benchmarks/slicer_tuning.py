"""Rate/accuracy sweeps and single-core speed of the ``slicer`` codec at real cuts.

    python benchmarks/slicer_tuning.py --model resnet20 --data cifar10 --cuts layer1 layer2 \
        --limit 5000 [--sweep quality | --sweep grid] [--speed] [--json PATH]

The head runs once over the images; every sample's IFs are then encoded into their own
bitstream (what one request sends), decoded and fed to the tail. Reported per setting: top-1
drop (pp), prediction flips against the uncompressed model (%, a lower-variance proxy), the
KL divergence of the logits, and bits per element counting every byte of every bitstream
(container header and CRC included). ``--sweep grid`` walks (keep, distortion) pairs around the
quality path; ``--speed`` times encode/decode on one thread, per sample and for one batch of
``--batch`` samples (MB/s of fp32 input).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.bench.codec_eval import collect_features  # noqa: E402
from splitcomp.bench.setup import load_eval_setup  # noqa: E402

GRID = [
    {"keep_pos": k, "keep_neg": k, "distortion": d}
    for k in (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
    for d in (2.0, 2.5, 3.0, 3.5, 4.0)
]


@torch.inference_mode()
def logits(tail: torch.nn.Module, feats: tuple[torch.Tensor, ...], batch: int = 250):
    n = feats[0].shape[0]
    return torch.cat([tail(*(t[s : s + batch] for t in feats)) for s in range(0, n, batch)])


def sweep(tail, feats, labels, settings: list[dict]) -> list[dict]:
    """One row per codec setting: drop, flips, KL and wire bits per element."""
    ref = logits(tail, feats.tensors)
    base = 100 * (ref.argmax(1) == labels).float().mean().item()
    n = len(labels)
    elements = feats.elements_per_sample
    rows = []
    for params in settings:
        codec = codecs.get("slicer", **params)
        outs, total = [], 0
        for i in range(n):
            data = codec.encode(feats.sample(i))
            total += len(data)
            outs.append(codec.decode(data))
        dec = tuple(torch.cat([o[j] for o in outs]) for j in range(len(feats.tensors)))
        out = logits(tail, dec)
        pred = out.argmax(1)
        kl = torch.nn.functional.kl_div(
            out.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="batchmean"
        )
        row = {
            "params": params,
            "n_images": n,
            "top1_baseline": base,
            "drop_pp": base - 100 * (pred == labels).float().mean().item(),
            "flips_pct": 100 * (pred != ref.argmax(1)).float().mean().item(),
            "kl": kl.item(),
            "bits_per_element": 8 * total / (n * elements),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def speed(feats, batch: int, repeats: int = 5, **params) -> dict:
    """Best-of-``repeats`` single-thread MB/s (fp32 input), per sample and for one batch."""
    codec = codecs.get("slicer", **params)
    x = feats.tensors[0]
    samples = [x[i : i + 1].contiguous() for i in range(min(batch, x.shape[0]))]
    big = x[:batch].contiguous()
    out = {}
    for label, items in (("per_sample", samples), ("batch", [big])):
        blobs = [codec.encode(t) for t in items]
        nbytes = sum(t.numel() * 4 for t in items)
        enc = dec = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t in items:
                codec.encode(t)
            t1 = time.perf_counter()
            for b in blobs:
                codec.decode(b)
            t2 = time.perf_counter()
            enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
        out[label] = {
            "encode_MBps": nbytes / enc / 1e6,
            "decode_MBps": nbytes / dec / 1e6,
            "encode_us_per_sample": 1e6 * enc / len(samples),
            "decode_us_per_sample": 1e6 * dec / len(samples),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--cuts", nargs="+", default=["layer1", "layer2"])
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--sweep", choices=["quality", "grid", "none"], default="quality")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report: dict = {"model": args.model, "cuts": {}}
    for cut in args.cuts:
        setup = load_eval_setup(args.model, None, args.data, cut, limit=args.limit)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        feats = collect_features(setup.head, setup.batches(250))
        print(f"# {args.model}@{cut}: {len(feats)} images, {feats.elements_per_sample} el/sample")
        entry: dict = {}
        if args.sweep != "none":
            settings = (
                [{"quality": q} for q in codecs.codec_class("slicer").quality_grid]
                if args.sweep == "quality"
                else GRID
            )
            entry["sweep"] = sweep(setup.tail, feats, feats.labels, settings)
        if args.speed:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            entry["speed"] = speed(feats, args.batch)
            torch.set_num_threads(threads)
            print(json.dumps(entry["speed"]), flush=True)
        report["cuts"][cut] = entry
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
