"""Serving under load: 64 concurrent clients, MobileNetV2 split vs full offload, batching.

* ``drop_pp``: slicer's quality knob is chosen by :func:`splitcomp.bench.search_quality` on a
  calibration half of the images (target <= 0.5 pp top-1 drop vs the uncompressed split) and
  the drop is reported on the other half.
* ``requests_per_s, p50_ms, p99_ms, wire_bytes_per_request, server_light_ratio``: the load
  generator (:mod:`splitcomp.runtime.load`) against the embedded server with that setting:
  split arm then full-offload arm (raw uint8 pixels, whole model on the server); server compute
  per request = decode + the request's share of its tail call.
* ``batching_speedup``: split-arm throughput with dynamic batching (max 32) vs max batch 1.
* ``overhead_us_per_request``: server process CPU per request minus tail CPU, from
  ``benchmarks/serve_overhead.py`` (server in its own process so its CPU can be counted), with
  batched decode; ``overhead_per_request_decode_us``: the same with request-by-request decode
  (``Deployment(batch_decode=False)``, the path before), in the same run.
* ``profile_us_per_request``: where one request's server CPU goes in that run (event loop,
  decode, tail, stacking/splitting/result encoding (wall), the process's other threads).
* ``decode_us_per_request``: the split arm's decode per request (its share of each batch)
  with batched decode and with request-by-request decode, both under the same load; and
  ``decode_micro``: the same in-process, 32 streams a call, best of 40, for slicer (this
  run's streams) and ResNet-20 ``layer2`` features coded by fp32/int8/zstd, with a decode
  pool of 0 and 2 threads (what threads give with each decoder today).
* ``targets``: the issue's targets at 64 clients and whether each is met.

Images: ``../shared/data/imagenet-samples`` plus the foolbox ImageNet photos when present,
else the foolbox photos alone. One torch thread throughout.

    python benchmarks/serve_load.py [--clients 64] [--split features.17] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def calibrate(split: str, data: list[str], target: float, limit: int | None) -> dict:
    """Choose slicer's quality on half the images; the drop on the other half."""
    from splitcomp.bench import FeatureSet, collect_features, evaluate_codec, search_quality
    from splitcomp.bench.codec_eval import calibration_split, top1
    from splitcomp.bench.setup import load_eval_setup
    from splitcomp.codecs import get

    feats = []
    for d in data:
        s = load_eval_setup("mobilenet_v2", None, d, split, limit=limit)
        feats.append(collect_features(s.head, s.dataset.batches(32)))
    fs = FeatureSet(tuple(torch.cat([f.tensors[i] for f in feats])
                          for i in range(len(feats[0].tensors))),
                    torch.cat([f.labels for f in feats]))
    cal_idx, rep_idx = calibration_split(len(fs), len(fs) // 2)
    params, _ = search_quality(s.tail, fs.subset(cal_idx), "slicer", target)
    rep = fs.subset(rep_idx)
    base, _ = top1(s.tail, rep.tensors, rep.labels)
    res = evaluate_codec(s.tail, rep, get("slicer", **params), baseline=base)
    return {"params": params, "drop_pp": res.drop_pp, "top1_split_uncompressed": base,
            "top1_slicer": res.top1, "report_images": len(rep),
            "bytes_per_sample_offline": res.wire_bytes_per_sample}


def decode_micro(streams: list[bytes], batch: int = 32, repeats: int = 40) -> dict:
    """Decode µs per request, in this process: request by request (``Deployment.decode``)
    vs one :class:`~splitcomp.runtime.batch_decode.BatchDecoder` call per ``batch`` streams
    with 0 and 2 pool threads; best of ``repeats``, the three interleaved."""
    from torch import nn

    from splitcomp.runtime import Deployment
    from splitcomp.runtime.batch_decode import BatchDecoder

    dep = Deployment("m", nn.Identity(), input_specs=None)
    streams = (streams * batch)[:batch]
    ways = {"per_request": lambda: [dep.decode(b) for b in streams]}
    for threads in (0, 2):
        dec = BatchDecoder(dep.device, threads)
        ways[f"batched_threads{threads}"] = (
            lambda d=dec: d.decode(streams, dep.limits, dep.check_header))
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / batch * 1e6)
    best["bytes_per_stream"] = sum(map(len, streams)) / len(streams)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--split", default="features.17")
    p.add_argument("--requests", type=int, default=1024, help="split-arm requests")
    p.add_argument("--full-requests", type=int, default=192, help="full-offload requests")
    p.add_argument("--target-drop", type=float, default=0.5)
    p.add_argument("--overhead-seconds", type=float, default=8.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from splitcomp.data import shared_data_path
    from splitcomp.runtime.load import prepare, run_embedded

    t0 = time.perf_counter()
    data = (["imagenet", "foolbox-imagenet"] if shared_data_path("imagenet-samples")
            else ["foolbox-imagenet"])
    cal = calibrate(args.split, data, args.target_drop, None)
    print(f"calibrated slicer {cal['params']}: drop {cal['drop_pp']:.2f} pp "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    setup = prepare("mobilenet_v2", args.split, data, codec="slicer", params=cal["params"],
                    name="mnv2")
    load = run_embedded(setup, args.clients, args.requests, full_requests=args.full_requests,
                        name="mnv2")
    print(f"load done ({time.perf_counter() - t0:.0f} s)", flush=True)
    dep = setup.deployments[0]
    dep.batch_decode = False  # the path before: request by request, same load
    per_request = run_embedded(setup, args.clients, args.requests, full_offload=False,
                               name="mnv2")
    dep.batch_decode = True
    dep.max_batch_size, dep.max_wait_ms = 1, 0.0
    single = run_embedded(setup, args.clients, args.requests, full_offload=False, name="mnv2")
    print(f"batch-1 and per-request decode arms done ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    import serve_overhead

    from splitcomp import codecs
    from splitcomp.partition import split
    from splitcomp.zoo import create_model

    torch.manual_seed(0)
    r20 = create_model("resnet20", weights=None).eval()
    head, _ = split(r20, "layer2", (torch.zeros(1, 3, 32, 32),))
    feats = [head(torch.randn(1, 3, 32, 32)) for _ in range(64)]
    bits = [codecs.get("fp32").encode(f) for f in feats]
    micro = {"slicer_mnv2": decode_micro(setup.split_bits)}
    for name in ("fp32", "int8", "zstd"):
        micro[f"{name}_r20"] = decode_micro([codecs.get(name).encode(f) for f in feats])
    ovh = serve_overhead.measure(bits, args.clients, args.overhead_seconds, 32, 2.0)
    ovh_old = serve_overhead.measure(bits, args.clients, args.overhead_seconds, 32, 2.0,
                                     batch_decode=False)
    s, s_old = load["split"], per_request["split"]
    profile = {  # CPU of each part, but stacking/splitting/result encoding: wall
        "event_loop": ovh["loop_cpu_us_per_request"],
        "decode": ovh["decode_cpu_us_per_request"],
        "tail": ovh["tail_cpu_us_per_request"],
        "stack_split_result_encoding_wall": ovh["stack_split_encode_us_per_request"],
        "other_threads": ovh["server_cpu_us_per_request"] - ovh["loop_cpu_us_per_request"]
        - ovh["worker_cpu_excl_tail_us_per_request"] - ovh["tail_cpu_us_per_request"],
        "process_total": ovh["server_cpu_us_per_request"],
    }
    out = {
        "clients": args.clients,
        "requests_per_s": s["requests_per_s"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "overhead_us_per_request": ovh["overhead_us_per_request"],
        "batching_speedup": s["requests_per_s"] / single["split"]["requests_per_s"],
        "server_light_ratio": load["server_light_ratio"],
        "drop_pp": cal["drop_pp"],
        "wire_bytes_per_request": s["wire_bytes_per_request"],
        "overhead_per_request_decode_us": ovh_old["overhead_us_per_request"],
        "profile_us_per_request": profile,
        "decode_us_per_request": {
            "batched": s["decode_us_per_request"], "per_request": s_old["decode_us_per_request"],
            "speedup": s_old["decode_us_per_request"] / s["decode_us_per_request"],
            "share_of_server_compute": s["decode_us_per_request"]
            / s["server_compute_us_per_request"]},
        "requests_per_s_per_request_decode": s_old["requests_per_s"],
        "decode_micro": micro,
    }
    out["targets"] = {
        "overhead_us_per_request<=100": out["overhead_us_per_request"] <= 100,
        "batching_speedup>=2": out["batching_speedup"] >= 2,
        "server_light_ratio>=10": out["server_light_ratio"] >= 10,
        "drop_pp<=0.5": out["drop_pp"] <= 0.5,
    }
    out["detail"] = {
        "model": "mobilenet_v2", "split": args.split, "data": data,
        "calibration": cal, "load": load, "batch_size_1": single["split"],
        "per_request_decode": s_old,
        "overhead": {**ovh, "model": "resnet20 (random) cut after layer2, fp32, "
                                      "server in its own process"},
        "overhead_per_request_decode": ovh_old,
        "torch_threads": 1, "seconds": time.perf_counter() - t0,
        "cpus": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "detail"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
