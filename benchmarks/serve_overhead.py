"""Embedded server on loopback: server CPU per request with the tail excluded, and throughput
with dynamic batching vs batch size 1, at N concurrent clients (default 64).

The server runs in its own process (ResNet-20, random weights, cut after layer2, one torch
thread so the tail's CPU is measured exactly); the clients are asyncio tasks in this process,
each with its own connection, sending precomputed bitstreams back to back. Server figures come
from its /metrics: overhead = (process CPU - tail CPU) / results.

    python benchmarks/serve_overhead.py [--clients 64] [--seconds 5] [--codec fp32] [--json P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def serve(max_batch_size: int, max_wait_ms: float, batch_decode: bool = True,
          decode_threads: int = 0) -> None:
    """The server process: print its url, serve until SIGTERM."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from splitcomp.runtime import Server, zoo_deployment

    dep, _ = zoo_deployment("resnet20", "layer2", weights="random", name="r20",
                            max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                            batch_decode=batch_decode, decode_threads=decode_threads)
    server = Server(dep, "127.0.0.1", 0, max_inflight_per_client=1024)
    asyncio.run(server.serve_forever(announce=True))


def _metrics(url: str) -> dict[str, float]:
    from splitcomp.runtime import fetch_metrics, parse_prometheus
    from splitcomp.runtime.stats import total

    s = parse_prometheus(fetch_metrics(url))
    names = ["process_cpu_seconds_total", "splitcomp_tail_cpu_seconds_total",
             "splitcomp_tail_seconds_total", "splitcomp_decode_seconds_total",
             "splitcomp_decode_cpu_seconds_total", "splitcomp_loop_cpu_seconds_total",
             "splitcomp_worker_cpu_seconds_total",
             "splitcomp_encode_seconds_total", "splitcomp_results_total",
             "splitcomp_batch_size_sum", "splitcomp_batch_size_count",
             "splitcomp_errors_total", "splitcomp_bytes_in_total"]
    return {n: total(s, n) for n in names}


async def _load(url: str, bitstreams: list[bytes], clients: int, seconds: float,
                warmup_s: float, deployment: str = "r20",
                ) -> tuple[list[float], dict[str, float], dict[str, float], float]:
    """``clients`` closed-loop clients sending ``bitstreams`` to ``deployment`` for
    ``seconds`` after ``warmup_s``: latencies, the server's metrics before and after, wall s
    (also used by ``benchmarks/transport.py``)."""
    from splitcomp.runtime import AsyncSplitClient

    conns = [AsyncSplitClient(url, None, "fp32", deployment, timeout_s=60)
             for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in conns))
    latencies: list[float] = []
    phase = {"measure": False, "stop": False}

    async def run(i: int, c: AsyncSplitClient) -> None:
        k = i
        while not phase["stop"]:
            r = await c.infer_encoded(bitstreams[k % len(bitstreams)])
            if phase["measure"]:
                latencies.append(r.latency_s)
            k += clients

    tasks = [asyncio.create_task(run(i, c)) for i, c in enumerate(conns)]
    await asyncio.sleep(warmup_s)
    before = await asyncio.to_thread(_metrics, url)
    t0 = time.perf_counter()
    phase["measure"] = True
    await asyncio.sleep(seconds)
    phase["measure"] = False
    wall = time.perf_counter() - t0
    after = await asyncio.to_thread(_metrics, url)
    phase["stop"] = True
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in conns))
    return latencies, before, after, wall


def measure(bitstreams: list[bytes], clients: int, seconds: float, max_batch_size: int,
            max_wait_ms: float, batch_decode: bool = True, decode_threads: int = 0) -> dict:
    """One server process under ``clients`` closed-loop clients for ``seconds``: its figures
    per request. ``batch_decode``/``decode_threads``: the deployment's decode path."""
    from splitcomp.cli.serve import read_listening_url

    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--max-batch-size",
                             str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
                             "--decode-threads", str(decode_threads)]
                            + ([] if batch_decode else ["--per-request-decode"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        url = read_listening_url(proc.stdout)
        if url is None:
            raise RuntimeError("server did not start")
        lat, b, a, wall = asyncio.run(_load(url, bitstreams, clients, seconds, warmup_s=1.0))
    finally:
        proc.terminate()
        proc.wait(30)
    d = {k: a[k] - b[k] for k in a}
    n = d["splitcomp_results_total"]
    lat_ms = np.array(lat) * 1e3
    return {
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "batch_decode": batch_decode,
        "decode_threads": decode_threads,
        "requests": int(n),
        "requests_per_s": n / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_batch_size": d["splitcomp_batch_size_sum"] / max(d["splitcomp_batch_size_count"], 1),
        "server_cpu_us_per_request": d["process_cpu_seconds_total"] / n * 1e6,
        "tail_cpu_us_per_request": d["splitcomp_tail_cpu_seconds_total"] / n * 1e6,
        "decode_us_per_request": d["splitcomp_decode_seconds_total"] / n * 1e6,
        "decode_cpu_us_per_request": d["splitcomp_decode_cpu_seconds_total"] / n * 1e6,
        "stack_split_encode_us_per_request": d["splitcomp_encode_seconds_total"] / n * 1e6,
        "loop_cpu_us_per_request": d["splitcomp_loop_cpu_seconds_total"] / n * 1e6,
        "worker_cpu_excl_tail_us_per_request": (d["splitcomp_worker_cpu_seconds_total"]
                                                - d["splitcomp_tail_cpu_seconds_total"]) / n * 1e6,
        "overhead_us_per_request": (d["process_cpu_seconds_total"]
                                    - d["splitcomp_tail_cpu_seconds_total"]) / n * 1e6,
        "errors": int(d["splitcomp_errors_total"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--codec", default="fp32", help="codec of the request bitstreams")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-batch-size", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--decode-threads", type=int, default=0, help="the decode pool's threads")
    p.add_argument("--per-request-decode", action="store_true",
                   help="decode request by request (the path before batched decode)")
    args = p.parse_args()
    if args.serve:
        serve(args.max_batch_size, args.max_wait_ms, not args.per_request_decode,
              args.decode_threads)
        return
    torch.set_num_threads(1)
    from splitcomp import codecs
    from splitcomp.partition import split
    from splitcomp.zoo import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", weights=None).eval()
    head, _ = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    codec = codecs.get(args.codec)
    with torch.inference_mode():
        bitstreams = [codec.encode(head(torch.randn(1, 3, 32, 32))) for _ in range(64)]
    options = dict(batch_decode=not args.per_request_decode,
                   decode_threads=args.decode_threads)
    batched = measure(bitstreams, args.clients, args.seconds, args.max_batch_size,
                      args.max_wait_ms, **options)
    single = measure(bitstreams, args.clients, args.seconds, 1, 0.0, **options)
    out = {
        "clients": args.clients,
        "codec": args.codec,
        "model": "resnet20 (random weights) cut after layer2",
        "bitstream_bytes": float(np.mean([len(b) for b in bitstreams])),
        "overhead_us_per_request": batched["overhead_us_per_request"],
        "overhead_excl_decode_us_per_request": batched["overhead_us_per_request"]
        - batched["decode_cpu_us_per_request"],
        "batching_speedup": batched["requests_per_s"] / single["requests_per_s"],
        "batched": batched,
        "batch_size_1": single,
        "note": "server and clients share this machine's cores; overhead counts the server "
                "process's CPU (event loop, websockets, protocol, dedup, batching, decode, "
                "stacking, result encoding), tail CPU excluded",
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
