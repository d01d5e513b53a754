"""Codec throughput on one core: numpy reference path vs compiled (numba) path vs zstd-1.

    python benchmarks/slicer_speed.py [--samples N] [--repeats N] [--json PATH] [--warm-cache]

One sample at a time of ResNet-20 ``layer2`` features on real CIFAR-10 images (shared data),
a synthetic ReLU map of the same shape otherwise. MB/s are of fp32 input (4 bytes an element),
best of ``--repeats`` passes over the samples, for the whole ``codec.encode``/``decode``
(container included) and for the codec's own ``encode_array``/``decode_array``. The JIT's
first-call time (compile, into a fresh numba cache unless ``--warm-cache``) is measured apart
and excluded from the MB/s. Both paths must give the same bytes: the run fails otherwise.
rans runs on the same samples, tokenwise on per-token LLM-like hidden states (1x1x576), each
with constriction (numpy path) and with the compiled coder. Times are the thread's CPU time
(``time.thread_time``): this machine is shared, and waiting for a core is not codec time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_time(fn, items: list, repeats: int) -> float:
    """Best total seconds over ``repeats`` passes of ``fn`` over ``items``."""
    for item in items[:4]:
        fn(item)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for item in items:
            fn(item)
        best = min(best, time.thread_time() - t0)
    return best


def measure(codec, samples: list[torch.Tensor], repeats: int) -> dict:
    arrays = [s.numpy() for s in samples]
    blobs = [codec.encode(s) for s in samples]
    nbytes = sum(a.size * 4 for a in arrays)
    row = {
        "encode_MBps": nbytes / best_time(codec.encode, samples, repeats) / 1e6,
        "decode_MBps": nbytes / best_time(codec.decode, blobs, repeats) / 1e6,
        "bits_per_element": 8 * sum(len(b) for b in blobs) / sum(a.size for a in arrays),
        "_blobs": blobs,
    }
    if codec.name == "slicer":
        from splitcomp.codecs.errors import DecodeLimits

        limits = DecodeLimits()
        payloads = [codec.encode_array(a) for a in arrays]
        pairs = list(zip(payloads, arrays, strict=True))
        row["encode_array_MBps"] = nbytes / best_time(codec.encode_array, arrays, repeats) / 1e6
        row["decode_array_MBps"] = nbytes / best_time(
            lambda pa: codec.decode_array(memoryview(pa[0]), pa[1].shape, limits), pairs, repeats
        ) / 1e6
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--warm-cache", action="store_true", help="keep numba's on-disk cache")
    args = ap.parse_args()
    if not args.warm_cache:  # before numba loads: a cold cache measures the real compile time
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="slicer-jit-")
    torch.set_num_threads(1)
    from codec_speed import real_cifar_features, synthetic_relu

    from splitcomp import codecs
    from splitcomp.codecs import _slicer_jit as jit

    real = real_cifar_features(args.samples)
    name, feats = real if real else ("synthetic ReLU 32x16x16", synthetic_relu(args.samples))
    samples = [feats[i : i + 1].contiguous() for i in range(len(feats))]
    report: dict = {"workload": f"{name}, one sample at a time", "samples": len(samples),
                    "elements_per_sample": samples[0].numel(), "threads": 1}
    slicer = codecs.get("slicer")
    rows = {}
    rows["zstd-1"] = measure(codecs.get("zstd", level=1), samples, args.repeats)
    jit.ENABLED = False
    rows["slicer numpy"] = measure(slicer, samples, args.repeats)
    if importlib_ok():
        jit.ENABLED = True
        t0 = time.thread_time()
        jit.warm_up()
        slicer.encode(samples[0])  # any specialisation warm_up did not cover
        slicer.decode(rows["slicer numpy"]["_blobs"][0])
        report["jit_first_call_s"] = time.thread_time() - t0
        report["jit_cache"] = "warm" if args.warm_cache else "cold (fresh NUMBA_CACHE_DIR)"
        rows["slicer compiled"] = measure(slicer, samples, args.repeats)
        same = rows["slicer compiled"]["_blobs"] == rows["slicer numpy"]["_blobs"]
        report["compiled_bytes_equal_numpy"] = same
        if not same:
            raise SystemExit("compiled slicer path wrote different bytes")
        import numba

        report["numba"] = numba.__version__
    else:
        report["numba"] = None
    # the other rANS codecs: constriction (numpy path) against the compiled coder
    from codec_speed import llm_hidden

    tokens = [llm_hidden(1) for _ in range(len(samples))]
    for cname, work in (("rans", samples), ("tokenwise", tokens)):
        for label, on in (("numpy", False), ("compiled", True)):
            jit.ENABLED = on and importlib_ok()
            rows[f"{cname} {label}"] = measure(codecs.get(cname), work, args.repeats)
        same = rows[f"{cname} numpy"]["_blobs"] == rows[f"{cname} compiled"]["_blobs"]
        report[f"{cname}_compiled_bytes_equal_numpy"] = same
        if not same:
            raise SystemExit(f"compiled {cname} wrote different bytes")
    jit.ENABLED = importlib_ok()
    ref = rows["zstd-1"]
    for row in rows.values():
        row.pop("_blobs")
        row["encode_vs_zstd1"] = row["encode_MBps"] / ref["encode_MBps"]
        row["decode_vs_zstd1"] = row["decode_MBps"] / ref["decode_MBps"]
    if "slicer compiled" in rows:
        n, c = rows["slicer numpy"], rows["slicer compiled"]
        report["compiled_vs_numpy"] = {
            k: c[k] / n[k] for k in ("encode_MBps", "decode_MBps", "encode_array_MBps",
                                     "decode_array_MBps")
        }
        for cname in ("rans", "tokenwise"):
            n, c = rows[f"{cname} numpy"], rows[f"{cname} compiled"]
            report[f"{cname}_compiled_vs_numpy"] = {
                k: c[k] / n[k] for k in ("encode_MBps", "decode_MBps")}
    report["targets"] = _targets(rows)
    report["rows"] = rows
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


def _targets(rows: dict) -> dict:
    """Issue #15's bars for one ResNet-20 ``layer2`` sample, met or missed in this run."""
    s, z = rows.get("slicer compiled"), rows["zstd-1"]
    if s is None:
        return {"note": "numba absent: no compiled path"}
    return {
        "slicer_encode_200MBps": s["encode_MBps"] >= 200,
        "slicer_decode_400MBps": s["decode_MBps"] >= 400,
        "slicer_decode_at_least_zstd1": s["decode_MBps"] >= z["decode_MBps"],
        "rans_3x": all(rows["rans compiled"][k] >= 3 * rows["rans numpy"][k]
                       for k in ("encode_MBps", "decode_MBps")),
        "tokenwise_3x": all(rows["tokenwise compiled"][k] >= 3 * rows["tokenwise numpy"][k]
                            for k in ("encode_MBps", "decode_MBps")),
    }


def importlib_ok() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


if __name__ == "__main__":
    main()
