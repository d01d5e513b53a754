"""Rate control on a bandwidth drop, with real bitstreams: controller vs fixed settings.

    python benchmarks/rate_control.py [--model resnet20 --split layer1] [--json PATH]

The head's features of real images are encoded at every setting of a ladder (fp16, int8,
rans and slicer settings): each request's byte count is the length of its own bitstream and
its correctness that of the tail on the decoded features. The ladder's accuracies (what the
controller believes) are measured on a disjoint calibration half of the images; requests
use the other half, each phase replaying the same images (so accuracies compare across phases
and policies). Only the ladder's Pareto front is used. Requests arrive every ``--period-ms``
and cross a simulated uplink (:class:`splitcomp.plan.channel.Channel`) whose bandwidth
follows a trace with a drop (default 10 -> 0.5 -> 10 Mbit/s, 20 s each). Compute per
request = head + encode + decode + tail, timed here at batch 1. Compared: the controller,
the fixed highest-quality setting of the ladder and the fixed lowest one; per phase: settings
used, latency p50/p95/max against the bound, requests over it, accuracy.

    python benchmarks/rate_control.py --runtime [--json docs/results/rate_control.json]

runs the same three policies on the real runtime instead, one after another in one process:
a :class:`splitcomp.runtime.Server` on 127.0.0.1 serves the tail (accepting every ladder
codec), a :class:`splitcomp.plan.adaptive.AdaptiveClient` runs the head, encodes with the
chosen setting, queues the request on a paced FIFO uplink that follows the trace (default
10 -> 0.5 -> 10 Mbit/s, 8 s each, one request every 100 ms) and sends it over the WebSocket;
latency is measured end to end. One JSON line per policy and phase; ``--json`` stores the
result under the file's ``"runtime"`` key, keeping the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.bench.codec_eval import collect_features, top1  # noqa: E402
from splitcomp.bench.sc2_report import load_images  # noqa: E402
from splitcomp.data import spread_indices  # noqa: E402
from splitcomp.partition import split  # noqa: E402
from splitcomp.plan.adaptive import AdaptiveClient, PacedLink, Sent  # noqa: E402
from splitcomp.plan.channel import BandwidthTrace, Channel, Pacer, parse_rate  # noqa: E402
from splitcomp.plan.rate_control import (  # noqa: E402
    FixedPolicy,
    RateController,
    Setting,
    setting_front,
    simulate,
    summarize,
)
from splitcomp.runtime import AsyncSplitClient, Deployment, Server  # noqa: E402
from splitcomp.zoo import load_model, model_config  # noqa: E402

LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fp16", {}),
    ("int8", {}),
    ("rans", {"bits": 4}),
    ("rans", {"bits": 3}),
    ("rans", {"bits": 2}),
    ("slicer", {"quality": 0.8}),
    ("slicer", {"quality": 0.5}),
    ("slicer", {"quality": 0.2}),
    ("slicer", {"quality": 0.05}),
)


def label(name: str, params: dict[str, Any]) -> str:
    return name + "".join(f" {k}={v:g}" for k, v in params.items())


def step_trace(phases: list[tuple[float, float]]) -> BandwidthTrace:
    """Piecewise-constant trace from ``(bps, seconds)`` phases (1 ms ramps between them)."""
    times, rates, t = [], [], 0.0
    for i, (bps, dur) in enumerate(phases):
        times.append(t + (1e-3 if i else 0.0))
        rates.append(bps)
        t += dur
        times.append(t)
        rates.append(bps)
    return BandwidthTrace(tuple(times), tuple(rates))


def parse_phases(text: str) -> list[tuple[float, float]]:
    """``"10Mbit:20,0.5Mbit:20,10Mbit:20"`` -> ``[(bps, seconds), ...]``."""
    out = []
    for part in text.split(","):
        rate, _, dur = part.partition(":")
        out.append((parse_rate(rate), float(dur)))
    return out


def median_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@torch.inference_mode()
def measure_ladder(args: argparse.Namespace
                   ) -> tuple[list[Setting], dict[str, Any], dict, dict[str, Any]]:
    """Per setting: real bytes and correctness of every request image, and the calibration
    accuracy / mean bytes / compute the controller is given; then the head, tail, images and
    request image indices (for ``--runtime``)."""
    data = args.data or [model_config(args.model).dataset]
    try:
        model = load_model(args.model, None)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        print(f"  no default weights ({e}); random initialisation", file=sys.stderr)
        model = load_model(args.model, "random")
        weights = "random"
    else:
        weights = "default"
    ds = load_images(args.model, model, data, args.images)
    x1 = ds[0][0].unsqueeze(0)
    head, tail = split(model, args.split, (x1,))
    feats = collect_features(head, ds.batches(64))
    n = len(feats)
    cal = torch.arange(0, n, 2)
    req = torch.arange(1, n, 2)
    head_ms = median_ms(lambda: head(x1))
    tail_ms = median_ms(lambda: tail(*feats.sample(0)))
    settings, per_request, cal_bytes = [], {}, {}
    for name, params in LADDER:
        codec = codecs.get(name, **params)
        nbytes, decoded, t_enc, t_dec = [], [], 0.0, 0.0
        for i in range(n):
            t0 = time.perf_counter()
            data_i = codec.encode(feats.sample(i))
            t1 = time.perf_counter()
            decoded.append(codec.decode(data_i))
            t_dec += time.perf_counter() - t1
            t_enc += t1 - t0
            nbytes.append(len(data_i))
        tensors = [torch.cat([d[j] for d in decoded]) for j in range(len(feats.tensors))]
        correct = top1(tail, tensors, feats.labels)[1].tolist()
        key = label(name, params)
        acc = 100.0 * sum(correct[i] for i in cal.tolist()) / len(cal)
        mean_b = sum(nbytes[i] for i in cal.tolist()) / len(cal)
        compute = head_ms + tail_ms + 1e3 * (t_enc + t_dec) / n
        settings.append(Setting(key, mean_b, acc, compute))
        per_request[key] = [(nbytes[i], correct[i]) for i in req.tolist()]
        cal_bytes[key] = [nbytes[i] for i in cal.tolist()]
        print(f"  {key:18s} {mean_b:8.0f} B  {acc:6.2f} %  {compute:6.2f} ms", file=sys.stderr)
    info = {"model": args.model, "split": args.split, "data": [str(d) for d in data], "images": n,
            "calibration_images": len(cal), "request_images": len(req),
            "head_ms": head_ms, "tail_ms": tail_ms, "weights": weights}
    parts = {"head": head, "tail": tail, "images": ds, "request_indices": req.tolist(),
             "calibration_bytes": cal_bytes}
    return settings, info, per_request, parts


def run_policy(policy, channel: Channel, arrivals: list[float], per_request: dict,
               cycle: int) -> list:
    """Request ``i`` sends image ``i % cycle`` of ``cycle`` spread over the request half
    (the images are class-sorted: a prefix would hold few classes)."""
    some = spread_indices(len(next(iter(per_request.values()))), cycle)

    def payload(i: int, k: int) -> tuple[int, bool]:
        return per_request[policy.settings[k].name][some[i % cycle]]

    return simulate(policy, channel, arrivals, payload)


async def _time_settings(parts: dict[str, Any], settings: list[Setting],
                         codec_of: dict[str, codecs.Codec], repeats: int,
                         max_wait_ms: float) -> dict[str, float]:
    """Median ms per setting of head, encode, server and answer on an unpaced loopback."""
    head, ds, req = parts["head"], parts["images"], parts["request_indices"]
    names = sorted({codec_of[s.name].name for s in settings})
    dep = Deployment("rate", parts["tail"], codecs=names, max_wait_ms=max_wait_ms)
    server = Server(dep, "127.0.0.1", 0, ping_interval=None)
    await server.start()
    out = {}
    try:
        async with AsyncSplitClient(server.url, head, "fp32", dep.name,
                                    head_in_thread=False) as client:
            await client.connect()
            for s in settings:
                client.codec = codec_of[s.name]
                times = []
                for j in range(repeats + 1):
                    x = ds[req[j % len(req)]][0].unsqueeze(0)
                    t0 = time.perf_counter()
                    await client.infer_encoded(client.encode(x))
                    times.append(time.perf_counter() - t0)
                out[s.name] = 1e3 * statistics.median(times[1:])
    finally:
        await server.stop()
    return out


def runtime_settings(settings: list[Setting], parts: dict[str, Any], args: argparse.Namespace
                     ) -> list[Setting]:
    """The ladder as the controller sees it on the runtime: ``compute_ms`` measured there
    (unpaced loopback: head, encode, WebSocket, server batching, decode, tail, answer) and
    bytes at the ``--bytes-quantile`` of the calibration images (variable-rate codecs: a
    setting whose mean just fits the bound would miss it for every larger image)."""
    codec_of = {label(n, p): codecs.get(n, **p) for n, p in LADDER}
    ms = asyncio.run(_time_settings(parts, settings, codec_of, 20, args.max_wait_ms))
    out = []
    for s in settings:
        sizes = sorted(parts["calibration_bytes"][s.name])
        q = sizes[min(len(sizes) - 1, int(args.bytes_quantile * len(sizes)))]
        print(f"  runtime {s.name:18s} {ms[s.name]:6.2f} ms (offline {s.compute_ms:.2f}), "
              f"{q} B at q{args.bytes_quantile:g} (mean {s.bytes_per_sample:.0f})",
              file=sys.stderr)
        out.append(Setting(s.name, float(q), s.accuracy, ms[s.name]))
    return out


async def _runtime_pass(policy, parts: dict[str, Any], channel: Channel, arrivals: list[float],
                        images: list[int], codec_of: dict[str, codecs.Codec],
                        max_wait_ms: float) -> list[Sent]:
    """One policy over the trace: a fresh server, connection and link clock."""
    ds = parts["images"]
    names = sorted({c.name for c in codec_of.values()})
    dep = Deployment("rate", parts["tail"], codecs=names, max_wait_ms=max_wait_ms)
    server = Server(dep, "127.0.0.1", 0, ping_interval=None)
    await server.start()
    try:
        async with AsyncSplitClient(server.url, None, "fp32", dep.name,
                                    head_in_thread=False) as client:
            await client.connect()
            x0 = ds[images[0]][0].unsqueeze(0)
            for c in codec_of.values():  # warm up every codec path, server side included
                feats = parts["head"](x0)
                feats = [feats] if isinstance(feats, torch.Tensor) else list(feats)
                await client.infer_encoded(c.encode(feats))
            adaptive = AdaptiveClient(client, parts["head"], policy, codec_of,
                                      PacedLink(Pacer(channel)))
            inputs = [ds[images[i % len(images)]][0].unsqueeze(0) for i in range(len(arrivals))]
            return await adaptive.run(inputs, arrivals)
    finally:
        await server.stop()


def run_runtime(args: argparse.Namespace, policies: dict[str, Any], parts: dict[str, Any],
                channel: Channel, arrivals: list[float], phases: list[tuple[float, float]],
                cycle: int, info: dict[str, Any], settings: list[Setting]) -> None:
    """The policies one after another on the real runtime, each over the whole trace; per
    phase: settings used, end-to-end latency against the bound, misses, accuracy."""
    bound = args.bound_ms / 1e3
    ds = parts["images"]
    req = parts["request_indices"]
    images = [req[j] for j in spread_indices(len(req), cycle)]
    codec_of = {label(n, p): codecs.get(n, **p) for n, p in LADDER}
    results: dict[str, Any] = {}
    for pname, policy in policies.items():
        print(f"  running {pname} ({arrivals[-1]:.0f} s) ...", file=sys.stderr)
        sent = asyncio.run(_runtime_pass(policy, parts, channel, arrivals, images, codec_of,
                                         args.max_wait_ms))
        reqs, failed = [], 0
        for i, s in enumerate(sent):
            if s.outputs is None:
                failed += 1
                continue
            pred = int(s.outputs[0].argmax(-1)[0])
            reqs.append(s.as_request(pred == int(ds[images[i % len(images)]][1])))
        per_phase = []
        for lo, hi in phases:
            ph = summarize([r for r in reqs if lo <= r.t < hi], bound)
            ph.update(start_s=lo, end_s=hi, bandwidth_bps=channel.rate_at(0.5 * (lo + hi)),
                      failed=sum(1 for s in sent if s.outputs is None and lo <= s.t < hi))
            per_phase.append(ph)
        res: dict[str, Any] = {"overall": {**summarize(reqs, bound), "failed": failed},
                               "phases": per_phase}
        if isinstance(policy, RateController):
            res["switches"] = policy.switches
            res["series"] = {
                "t_s": [round(s.t, 3) for s in sent],
                "setting": [s.setting for s in sent],
                "bytes": [s.nbytes for s in sent],
                "latency_ms": [round(1e3 * s.latency_s, 1) for s in sent],
                "queued_ms": [round(1e3 * s.queued_s, 1) for s in sent],
                "server_ms": [round(1e3 * s.server_s, 1) for s in sent],
                "estimate_kbps": [round(s.estimate_bps / 1e3) for s in sent],
            }
        results[pname] = res
        for ph in per_phase:
            print(json.dumps({"policy": pname, **{k: ph[k] for k in (
                "start_s", "end_s", "bandwidth_bps", "n", "p50_ms", "p95_ms", "max_ms",
                "missed", "failed", "accuracy", "mean_bytes", "settings")}}), flush=True)
    report = {
        "command": "python " + " ".join(sys.argv),
        "what": "real runtime: server on 127.0.0.1, WebSocket, real bitstreams; the uplink is "
                "a FIFO paced to the trace (splitcomp.plan.adaptive.PacedLink); latency is "
                "measured end to end (head, encode, link, server, downlink)",
        **info,
        "images_per_phase": cycle,
        "bound_ms": args.bound_ms, "rtt_ms": args.rtt_ms, "period_ms": args.period_ms,
        "max_wait_ms": args.max_wait_ms, "bytes_quantile": args.bytes_quantile,
        "trace": {"times": list(channel.trace.times), "bps": list(channel.trace.bps)}
        if channel.trace is not None else None,
        "ladder": [s.__dict__ for s in settings],
        "pareto_front": [s.name for s in next(iter(policies.values())).settings],
        "results": results,
    }
    if args.json:
        doc = json.loads(args.json.read_text()) if args.json.exists() else {}
        doc["runtime"] = report
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--split", default="layer1")
    ap.add_argument("--data", action="append", help="dataset, repeatable (default: the "
                    "model's)")
    ap.add_argument("--images", type=int, help="use N images: half calibration, half "
                    "requests (default 2000; 1000 with --runtime)")
    ap.add_argument("--phases", help="rate:seconds,... of a step trace (default "
                    "10Mbit:20,0.5Mbit:20,10Mbit:20; 10Mbit:8,0.5Mbit:8,10Mbit:8 with --runtime)")
    ap.add_argument("--trace", type=Path, help="a 'time_s bandwidth_bps' file instead")
    ap.add_argument("--bound-ms", type=float, default=100.0)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--period-ms", type=float, help="time between requests (default 50; 100 "
                    "with --runtime)")
    ap.add_argument("--runtime", action="store_true",
                    help="run the policies on the real runtime (server on 127.0.0.1, paced "
                    "link) instead of simulating; --json then updates the file's 'runtime' key")
    ap.add_argument("--max-wait-ms", type=float, default=1.0,
                    help="--runtime: the server's batching wait")
    ap.add_argument("--bytes-quantile", type=float, default=0.95,
                    help="--runtime: a setting's bytes for the controller, as a quantile of "
                    "its calibration bitstreams")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rt = args.runtime
    args.images = args.images or (1000 if rt else 2000)
    args.phases = args.phases or ("10Mbit:8,0.5Mbit:8,10Mbit:8" if rt else
                                  "10Mbit:20,0.5Mbit:20,10Mbit:20")
    args.period_ms = args.period_ms or (100.0 if rt else 50.0)
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)

    settings, info, per_request, parts = measure_ladder(args)
    if rt:
        info["offline_compute_ms"] = {s.name: s.compute_ms for s in settings}
        settings = runtime_settings(settings, parts, args)
    front = setting_front(settings)
    if args.trace:
        trace = BandwidthTrace.load(args.trace)
        bounds = list(zip(trace.times[:-1], trace.times[1:], strict=True))
        phases = [(lo, hi) for lo, hi in bounds if hi - lo > 0.01]
    else:
        spec = parse_phases(args.phases)
        trace = step_trace(spec)
        edges = [0.0]
        for _, dur in spec:
            edges.append(edges[-1] + dur)
        phases = list(zip(edges[:-1], edges[1:], strict=True))
    channel = Channel(rtt_s=args.rtt_ms / 1e3, trace=trace)
    end = trace.times[-1]
    arrivals = [i * args.period_ms / 1e3 for i in range(int(end / (args.period_ms / 1e3)))]
    bound = args.bound_ms / 1e3
    first_bps = trace.bps[0]
    policies = {
        "controller": RateController(front, bound, channel.rtt_s, initial_bps=first_bps,
                                     start=len(front) - 1),
        f"fixed highest ({front[-1].name})": FixedPolicy(front, len(front) - 1),
        f"fixed lowest ({front[0].name})": FixedPolicy(front, 0),
    }
    # every phase replays the same images when there are enough, so that accuracies of
    # different phases (and policies) are comparable
    n_req = len(next(iter(per_request.values())))
    cycle = min(n_req, min(sum(lo <= t < hi for t in arrivals) for lo, hi in phases))
    if rt:
        run_runtime(args, policies, parts, channel, arrivals, phases, cycle, info, settings)
        return
    results: dict[str, Any] = {}
    for pname, policy in policies.items():
        reqs = run_policy(policy, channel, arrivals, per_request, cycle)
        per_phase = []
        for lo, hi in phases:
            s = summarize([r for r in reqs if lo <= r.t < hi], bound)
            s.update(start_s=lo, end_s=hi, bandwidth_bps=trace.at(0.5 * (lo + hi)))
            per_phase.append(s)
        results[pname] = {"overall": summarize(reqs, bound), "phases": per_phase}
        if isinstance(policy, RateController):
            results[pname]["switches"] = policy.switches
            results[pname]["series"] = {
                "t_s": [round(r.t, 3) for r in reqs],
                "setting": [r.setting for r in reqs],
                "bytes": [r.nbytes for r in reqs],
                "latency_ms": [round(1e3 * r.latency_s, 1) for r in reqs],
                "correct": [int(r.correct) for r in reqs],
                "estimate_kbps": [round(r.estimate_bps / 1e3) for r in reqs],
            }
    # print
    print(f"{info['model']} @ {info['split']}: bound {args.bound_ms:g} ms, RTT "
          f"{args.rtt_ms:g} ms, one request every {args.period_ms:g} ms")
    print("ladder (Pareto front, calibration half): " + ", ".join(
        f"{s.name} {s.bytes_per_sample:.0f} B {s.accuracy:.1f} %" for s in front))
    head = (f"{'policy':30s} {'phase':>16s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>8s} "
            f"{'missed':>7s} {'top-1':>6s}  settings")
    print(head)
    print("-" * len(head))
    for pname, res in results.items():
        for ph in [*res["phases"], {**res["overall"], "label": "all"}]:
            tag = ph.get("label") or (f"{ph['bandwidth_bps'] / 1e6:g} Mbit/s "
                                      f"{ph['start_s']:g}-{ph['end_s']:g}s")
            used = ", ".join(f"{k} x{v}" for k, v in sorted(ph["settings"].items(),
                                                              key=lambda kv: -kv[1]))
            print(f"{pname:30s} {tag:>16s} {ph['p50_ms']:7.1f} {ph['p95_ms']:7.1f} "
                  f"{ph['max_ms']:8.1f} {ph['missed']:4d}/{ph['n']:<4d} "
                  f"{ph['accuracy']:5.1f}%  {used}")
    report = {
        "benchmark": "rate_control",
        "command": "python " + " ".join(sys.argv),
        **info,
        "images_per_phase": cycle,
        "bound_ms": args.bound_ms, "rtt_ms": args.rtt_ms, "period_ms": args.period_ms,
        "trace": {"times": list(trace.times), "bps": list(trace.bps)},
        "ladder": [s.__dict__ for s in settings],
        "pareto_front": [s.name for s in front],
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
