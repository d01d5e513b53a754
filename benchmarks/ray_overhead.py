"""Ray Serve vs the embedded server: the same tail, the same request frames, the same clients.

Each arm serves one deployment (default ResNet-20 cut after layer2, random weights, fp32
bitstreams, max batch 32, max wait 2 ms, one torch thread) and is driven by ``--clients``
threads, each sending ``--requests`` pre-encoded request frames one after another (embedded:
one WebSocket connection per client; Ray: one keep-alive HTTP connection per client to the
Serve proxy). Reported per arm: requests/s, p50/p99 latency, mean batch size, tail ms per
request (the server's own timing), at 1 client (latency alone) and at ``--clients`` (load);
then Ray's extra p50 latency at both, and its extra machine time per request at saturation
(``1000 / req_per_s`` difference: both arms share the same cores). Both arms run in this
process, in the same run (Ray: a local ``ray.init(num_cpus=2)``, one replica).

    python benchmarks/ray_overhead.py [--clients 16] [--requests 25] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _drive(clients: int, requests: int, frames: list[bytes],
           connect: Callable[[], tuple[Callable[[bytes], bytes], Callable[[], None]]]) -> dict:
    """Run ``clients`` threads of ``requests`` sequential requests; figures of the run."""
    from splitcomp.runtime import protocol as P

    lat: list[float] = []
    batch: list[int] = []
    tail_us: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        send, close = connect()
        mine, sizes, tails = [], [], []
        try:
            start.wait()
            for j in range(requests):
                t0 = time.perf_counter()
                resp = P.parse_response(send(frames[(k * requests + j) % len(frames)]))
                mine.append(time.perf_counter() - t0)
                if not resp.ok or resp.timing is None:
                    errors.append(f"{resp.code}: {resp.message}")
                    continue
                sizes.append(resp.timing.batch_size)
                tails.append(resp.timing.tail_us)
        finally:
            close()
            with lock:
                lat.extend(mine)
                batch.extend(sizes)
                tail_us.extend(tails)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    n = len(lat)
    return {"requests": n, "errors": len(errors), "requests_per_s": n / wall,
            "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * lat[min(n - 1, int(0.99 * n))],
            "mean_batch_size": statistics.fmean(batch) if batch else 0.0,
            "tail_ms_per_request": (statistics.fmean(t / b for t, b in zip(tail_us, batch,
                                                                          strict=True)) / 1e3
                                    if batch else 0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--split", default="layer2")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    from websockets.sync.client import connect as ws_connect

    from splitcomp import codecs
    from splitcomp.runtime import Server, zoo_deployment
    from splitcomp.runtime import protocol as P
    from splitcomp.runtime import ray_backend as rb

    opts = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms}
    dep, head = zoo_deployment(args.model, args.split, weights="random", name="bench",
                               codecs=["fp32"], **opts)
    shape = (1, 3, 224, 224) if args.model.startswith("mobilenet") else (1, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    fp32 = codecs.get("fp32")
    frames = []
    for i in range(32):
        with torch.inference_mode():
            feats = head(torch.randn(shape, generator=gen))
        frames.append(P.encode_request(i + 1, "bench", fp32.encode(list(feats))))
    out: dict = {"model": args.model, "split": args.split, "clients": args.clients,
                 "requests_per_client": args.requests, "frame_bytes": len(frames[0]), **opts}

    # embedded server (asyncio, in a thread of this process)
    with Server(dep, "127.0.0.1", 0).start_in_thread() as srv:
        def ws() -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
            conn = ws_connect(srv.url, compression=None, proxy=None, open_timeout=10)

            def send(frame: bytes) -> bytes:
                conn.send(frame)
                return conn.recv(timeout=30)  # type: ignore[return-value]
            return send, conn.close

        _drive(4, 5, frames, ws)  # warm-up
        out["embedded_1_client"] = _drive(1, args.requests, frames, ws)
        out["embedded"] = _drive(args.clients, args.requests, frames, ws)
    print("embedded", json.dumps(out["embedded"]), flush=True)

    # Ray Serve (local cluster, one replica, same deployment options)
    t0 = time.perf_counter()
    app = rb.build_app(lambda: [zoo_deployment(args.model, args.split, weights="random",
                                               name="bench", codecs=["fp32"], **opts)[0]],
                       num_cpus=1, threads=1, **opts)
    try:
        url = rb.start(app, port=8123, num_cpus=2)
        rb.wait_ready(url, timeout_s=120)
        out["ray_start_s"] = time.perf_counter() - t0

        def http() -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
            c = rb.FrameClient(url, timeout_s=60)

            def send(frame: bytes) -> bytes:
                status, body = c.post(frame)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                return body
            return send, c.close

        _drive(4, 5, frames, http)  # warm-up
        out["ray_1_client"] = _drive(1, args.requests, frames, http)
        out["ray"] = _drive(args.clients, args.requests, frames, http)
    finally:
        rb.shutdown()
    print("ray", json.dumps(out["ray"]), flush=True)
    e, r = out["embedded"], out["ray"]
    out["ray_extra_ms_p50_1_client"] = out["ray_1_client"]["p50_ms"] - out[
        "embedded_1_client"]["p50_ms"]
    out["ray_extra_ms_p50"] = r["p50_ms"] - e["p50_ms"]
    # machine time per request at saturation (both arms share the same cores)
    out["ray_extra_ms_per_request_saturated"] = 1e3 / r["requests_per_s"] - 1e3 / e[
        "requests_per_s"]
    out["throughput_ratio_embedded_over_ray"] = e["requests_per_s"] / r["requests_per_s"]
    out["ray_version"] = __import__("ray").__version__
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
