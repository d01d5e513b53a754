"""Server transports on loopback, in one run: server CPU per request, requests/s and latency
for each of ``websockets``, ``picows`` and ``asyncio`` (own RFC 6455 framing), with ratios
against websockets.

The server runs in its own process (as in ``benchmarks/serve_overhead.py``) with a cheap tail
(the first 10 features of each sample), so the transport dominates its CPU; requests carry
``--elements`` fp32 values (default 512: 2 KiB, about a slicer bitstream of a ResNet-20
layer2 sample). N clients (default 64) are asyncio tasks in this process, one ``websockets``
connection each (the unchanged client), sending back to back. Server figures come from its
``/metrics``: CPU per request = process CPU / results; loop CPU = the event-loop thread's.
Transports take turns (``--rounds``); each figure is the median over the rounds.

    python benchmarks/transport.py [--clients 64] [--seconds 5] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import _load  # noqa: E402 - the same load and server metrics

TRANSPORTS = ("websockets", "picows", "asyncio")


class FirstTen(nn.Module):
    """A tail that costs next to nothing: the transport is what is measured."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10].clone()


def serve(transport: str, max_batch_size: int, max_wait_ms: float) -> None:
    """The server process: print its url, serve until SIGTERM."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from splitcomp.runtime import Deployment, Server

    dep = Deployment("tiny", FirstTen(), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
    server = Server(dep, "127.0.0.1", 0, max_inflight_per_client=1024, transport=transport)
    asyncio.run(server.serve_forever(announce=True))


def measure(transport: str, frames: list[bytes], clients: int, seconds: float,
            max_batch_size: int, max_wait_ms: float) -> dict:
    from splitcomp.cli.serve import read_listening_url

    proc = subprocess.Popen([sys.executable, __file__, "--serve", transport,
                             "--max-batch-size", str(max_batch_size),
                             "--max-wait-ms", str(max_wait_ms)], stdout=subprocess.PIPE, text=True)
    try:
        url = read_listening_url(proc.stdout)
        if url is None:
            raise RuntimeError(f"server ({transport}) did not start")
        lat, b, a, wall = asyncio.run(_load(url, frames, clients, seconds, warmup_s=1.0,
                                            deployment="tiny"))
    finally:
        proc.terminate()
        proc.wait(30)
    d = {k: a[k] - b[k] for k in a}
    n = d["splitcomp_results_total"]
    lat_ms = np.array(lat) * 1e3
    return {
        "requests": int(n),
        "requests_per_s": n / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_batch_size": d["splitcomp_batch_size_sum"] / max(d["splitcomp_batch_size_count"], 1),
        "server_cpu_us_per_request": d["process_cpu_seconds_total"] / n * 1e6,
        "loop_cpu_us_per_request": d["splitcomp_loop_cpu_seconds_total"] / n * 1e6,
        "worker_cpu_us_per_request": d["splitcomp_worker_cpu_seconds_total"] / n * 1e6,
        "tail_cpu_us_per_request": d["splitcomp_tail_cpu_seconds_total"] / n * 1e6,
        "errors": int(d["splitcomp_errors_total"]),
    }


_KEYS = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request",
         "loop_cpu_us_per_request", "worker_cpu_us_per_request", "tail_cpu_us_per_request",
         "mean_batch_size")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per transport, taking turns")
    p.add_argument("--elements", type=int, default=512, help="fp32 values per request")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.max_batch_size, args.max_wait_ms)
        return
    torch.set_num_threads(1)
    from splitcomp import codecs

    torch.manual_seed(0)
    fp32 = codecs.get("fp32")
    frames = [fp32.encode(torch.randn(1, args.elements)) for _ in range(64)]
    names = args.transports.split(",")
    runs: dict[str, list[dict]] = {t: [] for t in names}
    for _ in range(args.rounds):
        for t in names:
            runs[t].append(measure(t, frames, args.clients, args.seconds, args.max_batch_size,
                                   args.max_wait_ms))
    med = {t: {k: statistics.median(r[k] for r in rs) for k in _KEYS} for t, rs in runs.items()}
    base = med.get("websockets")
    out = {
        "clients": args.clients,
        "request_bytes": float(np.mean([len(f) for f in frames])),
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "median": med,
        "vs_websockets": {t: {
            "server_cpu_per_request": m["server_cpu_us_per_request"]
            / base["server_cpu_us_per_request"],
            "loop_cpu_per_request": m["loop_cpu_us_per_request"] / base["loop_cpu_us_per_request"],
            "requests_per_s": m["requests_per_s"] / base["requests_per_s"],
            "p99": m["p99_ms"] / base["p99_ms"],
        } for t, m in med.items()} if base else {},
        "runs": runs,
        "note": "server and clients share this machine's cores (2, shared with other jobs): "
                "ratios within one run matter, absolute figures are noisy; server CPU counts "
                "the server process (event loop, framing, protocol, batching, decode, encode)",
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
