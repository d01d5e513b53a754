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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.bench.evaluate import collect_features, top1  # noqa: E402
from splitcomp.bench.report import load_images  # noqa: E402
from splitcomp.bench.setup import load_model  # noqa: E402
from splitcomp.data import spread_indices  # noqa: E402
from splitcomp.partition import split  # noqa: E402
from splitcomp.plan.channel import BandwidthTrace, Channel, parse_rate  # noqa: E402
from splitcomp.plan.rate_control import (  # noqa: E402
    FixedPolicy,
    RateController,
    Setting,
    pareto_front,
    simulate,
    summarize,
)
from splitcomp.zoo import model_config  # noqa: E402

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
def measure_ladder(args: argparse.Namespace) -> tuple[list[Setting], dict[str, Any], dict]:
    """Per setting: real bytes and correctness of every request image, and the calibration
    accuracy / mean bytes / compute the controller is given."""
    data = args.data or [model_config(args.model).dataset]
    model = load_model(args.model, None)
    ds = load_images(args.model, model, data, args.images)
    x1 = ds[0][0].unsqueeze(0)
    head, tail = split(model, args.split, (x1,))
    feats = collect_features(head, ds.batches(64))
    n = len(feats)
    cal = torch.arange(0, n, 2)
    req = torch.arange(1, n, 2)
    head_ms = median_ms(lambda: head(x1))
    tail_ms = median_ms(lambda: tail(*feats.sample(0)))
    settings, per_request = [], {}
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
        print(f"  {key:18s} {mean_b:8.0f} B  {acc:6.2f} %  {compute:6.2f} ms", file=sys.stderr)
    info = {"model": args.model, "split": args.split, "data": [str(d) for d in data], "images": n,
            "calibration_images": len(cal), "request_images": len(req),
            "head_ms": head_ms, "tail_ms": tail_ms}
    return settings, info, per_request


def run_policy(policy, channel: Channel, arrivals: list[float], per_request: dict,
               cycle: int) -> list:
    """Request ``i`` sends image ``i % cycle`` of ``cycle`` spread over the request half
    (the images are class-sorted: a prefix would hold few classes)."""
    some = spread_indices(len(next(iter(per_request.values()))), cycle)

    def payload(i: int, k: int) -> tuple[int, bool]:
        return per_request[policy.settings[k].name][some[i % cycle]]

    return simulate(policy, channel, arrivals, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--split", default="layer1")
    ap.add_argument("--data", action="append", help="dataset, repeatable (default: the "
                    "model's)")
    ap.add_argument("--images", type=int, default=2000,
                    help="use N images: half calibration, half requests")
    ap.add_argument("--phases", default="10Mbit:20,0.5Mbit:20,10Mbit:20",
                    help="rate:seconds,... of a step trace")
    ap.add_argument("--trace", type=Path, help="a 'time_s bandwidth_bps' file instead")
    ap.add_argument("--bound-ms", type=float, default=100.0)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--period-ms", type=float, default=50.0, help="time between requests")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)

    settings, info, per_request = measure_ladder(args)
    front = pareto_front(settings)
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
