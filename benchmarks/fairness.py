"""Fair shares and bounded memory under an abusive client, on the embedded server (loopback).

* ``good``: 8 clients, each with its own token and one request in flight at a time
  (ResNet-20, random weights, cut after layer2, one fp32 sample: 32 KiB per request), first
  alone (``undisturbed``), then while one more token keeps ``--heavy-inflight`` requests of
  ``--heavy-samples`` samples in flight (``disturbed``; it re-sends as soon as an answer
  comes, after 10 ms when the answer is OVERLOADED). Reported: the good clients' requests/s,
  p50/p99 latency, timeouts and errors, the ratio disturbed/undisturbed (target >= 0.5, no
  timeouts) and what the heavy client got.
* ``non_reader``: a client on a raw socket that sends requests of 2 KiB whose answers are
  16 KiB, and never reads. Reported: the server process's resident memory growth (MB) over
  ``--memory-seconds``, the most answer bytes it held queued, and how many requests the
  client got in before the server stopped reading it.

The server runs in its own process with its default limits (one worker, batches of up to 32);
the clients are asyncio tasks in this process. One torch thread.

    python benchmarks/fairness.py [--seconds 10] [--heavy-inflight 250] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

GOOD = 8
TOKENS = {f"good{i}": f"good-token-{i:02d}-0123456789" for i in range(GOOD)}
TOKENS["heavy"] = "heavy-token-0123456789abc"
TOKENS["reader"] = "reader-token-0123456789ab"


def serve(tokens_file: str) -> None:
    """The server process: r20 and a 'wide' echo (answers 8x the request); until SIGTERM."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from torch import nn

    from splitcomp.runtime import Deployment, Server, zoo_deployment

    class Wide(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat(1, 8)

    r20, _ = zoo_deployment("resnet20", "layer2", weights="random", name="r20")
    server = Server([r20, Deployment("wide", Wide())], "127.0.0.1", 0, tokens=tokens_file)
    asyncio.run(server.serve_forever(announce=True))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _metrics(url: str) -> dict[str, float]:
    from splitcomp.runtime import fetch_metrics, parse_prometheus
    from splitcomp.runtime.stats import total

    s = parse_prometheus(fetch_metrics(url, token=TOKENS["reader"]))
    names = ["splitcomp_output_bytes", "splitcomp_reads_paused_total",
             "splitcomp_output_overflows_total", "splitcomp_fair_deferrals_total",
             "splitcomp_results_total", "splitcomp_inflight_bytes"]
    out = {n: total(s, n) for n in names}
    out["overloaded"] = total(s, "splitcomp_errors_total", code="OVERLOADED")
    out["timeouts"] = total(s, "splitcomp_errors_total", code="TIMEOUT")
    return out


# -- good clients and the heavy one ------------------------------------------------------
async def _good(url: str, bits: list[bytes], seconds: float, stop_heavy: asyncio.Event | None,
                heavy_task: asyncio.Task | None) -> dict:
    from splitcomp.runtime import AsyncSplitClient, RuntimeTimeout, ServerError

    clients = [AsyncSplitClient(url, None, "fp32", "r20", token=TOKENS[f"good{i}"],
                                timeout_s=30.0) for i in range(GOOD)]
    await asyncio.gather(*(c.connect() for c in clients))
    lat: list[float] = []
    counts = {"timeouts": 0, "errors": 0}
    phase = {"measure": False, "stop": False}

    async def run(i: int, c: AsyncSplitClient) -> None:
        k = i
        while not phase["stop"]:
            try:
                r = await c.infer_encoded(bits[k % len(bits)])
                if phase["measure"]:
                    lat.append(r.latency_s)
            except RuntimeTimeout:
                counts["timeouts"] += phase["measure"]
            except ServerError:
                counts["errors"] += phase["measure"]
            k += GOOD

    tasks = [asyncio.create_task(run(i, c)) for i, c in enumerate(clients)]
    await asyncio.sleep(2.0)  # warm up (and let the heavy backlog build)
    phase["measure"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    phase["measure"] = False
    before_stop = list(lat)
    if stop_heavy is not None:
        stop_heavy.set()
    phase["stop"] = True
    await asyncio.gather(*tasks)
    if heavy_task is not None:
        await heavy_task
    await asyncio.gather(*(c.close() for c in clients))
    ms = np.array(before_stop) * 1e3
    return {"requests_per_s": len(ms) / wall, "requests": len(ms),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, **counts}


async def _heavy(url: str, frame_body: bytes, inflight: int, stop: asyncio.Event) -> dict:
    """Keep ``inflight`` requests in flight until ``stop``; counts what came back."""
    from websockets.asyncio.client import connect

    from splitcomp.runtime import protocol as P

    got = {"results": 0, "overloaded": 0, "other_errors": 0}
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {TOKENS['heavy']}"},
                       compression=None, max_size=None)
    rid = 0
    free = asyncio.Semaphore(inflight)
    t0 = time.perf_counter()

    async def sender() -> None:
        nonlocal rid
        while not stop.is_set():
            await free.acquire()
            rid += 1
            await ws.send(P.encode_request(rid, "r20", frame_body))

    async def reader() -> None:
        async for msg in ws:
            resp = P.parse_response(msg)
            if resp.ok:
                got["results"] += 1
            elif resp.code is P.ErrorCode.OVERLOADED:
                got["overloaded"] += 1
                await asyncio.sleep(0.01)
            else:
                got["other_errors"] += 1
            free.release()

    send_task = asyncio.create_task(sender())
    read_task = asyncio.create_task(reader())
    await stop.wait()
    wall = time.perf_counter() - t0
    send_task.cancel()
    await ws.close()
    for t in (send_task, read_task):
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass
    got["results_per_s"] = got["results"] / wall
    return got


async def _disturbed(url: str, bits: list[bytes], heavy_body: bytes, inflight: int,
                     seconds: float) -> tuple[dict, dict]:
    stop = asyncio.Event()
    heavy = asyncio.create_task(_heavy(url, heavy_body, inflight, stop))
    good = await _good(url, bits, seconds, stop, heavy)
    return good, heavy.result()


# -- the client that never reads ---------------------------------------------------------
def _non_reader(url: str, pid: int, seconds: float) -> dict:
    from websockets.frames import Frame, Opcode

    from splitcomp import codecs
    from splitcomp.runtime import protocol as P

    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKENS['reader']}"
                  "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    sock.settimeout(0.2)
    body = codecs.get("fp32").encode(torch.ones(1, 512))
    rss0 = _rss_mb(pid)
    most_rss, most_out, sent, rid = rss0, 0.0, 0, 0
    timeline: list[float] = []
    t0 = time.monotonic()
    next_poll = t0
    while time.monotonic() - t0 < seconds:
        rid += 1
        frame = Frame(Opcode.BINARY, P.encode_request(rid, "wide", body))
        try:
            sock.sendall(frame.serialize(mask=True, extensions=[]))
            sent += 1
        except TimeoutError:  # the server stopped reading us
            time.sleep(0.05)
        except OSError:  # closed by the server
            break
        if time.monotonic() >= next_poll:
            rss = _rss_mb(pid)
            most_rss = max(most_rss, rss)
            most_out = max(most_out, _metrics(url)["splitcomp_output_bytes"])
            if len(timeline) < (time.monotonic() - t0):
                timeline.append(round(rss - rss0, 1))
            next_poll = time.monotonic() + 0.25
    m = _metrics(url)
    sock.close()
    return {"seconds": seconds, "requests_sent": sent, "request_bytes": len(body) + 17,
            "answer_bytes": 16 * 1024 + 60, "rss_start_mb": rss0, "rss_max_mb": most_rss,
            "rss_growth_mb": most_rss - rss0, "rss_growth_each_second_mb": timeline,
            "max_output_queued_mb": most_out / 2**20,
            "reads_paused": m["splitcomp_reads_paused_total"],
            "closed_for_unread_answers": m["splitcomp_output_overflows_total"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--heavy-inflight", type=int, default=250)
    p.add_argument("--heavy-samples", type=int, default=8)
    p.add_argument("--memory-seconds", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    torch.set_num_threads(1)
    from splitcomp import codecs
    from splitcomp.cli.serve import read_listening_url
    from splitcomp.partition import split
    from splitcomp.zoo import create_model

    torch.manual_seed(0)
    head, _ = split(create_model("resnet20", weights=None).eval(), "layer2",
                    (torch.zeros(1, 3, 32, 32),))
    fp32 = codecs.get("fp32")
    with torch.inference_mode():
        bits = [fp32.encode(head(torch.randn(1, 3, 32, 32))) for _ in range(32)]
        heavy_body = fp32.encode(head(torch.randn(args.heavy_samples, 3, 32, 32)))
    tokens_file = Path(f"/tmp/splitcomp-fairness-tokens-{os.getpid()}")
    tokens_file.write_text("".join(f"{k} {v}\n" for k, v in TOKENS.items()))
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(tokens_file)],
                            stdout=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    try:
        url = read_listening_url(proc.stdout)
        if url is None:
            raise RuntimeError("server did not start")
        undisturbed = asyncio.run(_good(url, bits, args.seconds, None, None))
        m0 = _metrics(url)
        disturbed, heavy = asyncio.run(_disturbed(url, bits, heavy_body, args.heavy_inflight,
                                                  args.seconds))
        m1 = _metrics(url)
        memory = _non_reader(url, proc.pid, args.memory_seconds)
    finally:
        proc.terminate()
        proc.wait(30)
        tokens_file.unlink()
    ratio = disturbed["requests_per_s"] / undisturbed["requests_per_s"]
    out = {
        "good_clients": GOOD,
        "good_requests_per_s_undisturbed": undisturbed["requests_per_s"],
        "good_requests_per_s_disturbed": disturbed["requests_per_s"],
        "good_throughput_kept": ratio,
        "good_p99_ms_undisturbed": undisturbed["p99_ms"],
        "good_p99_ms_disturbed": disturbed["p99_ms"],
        "good_timeouts_disturbed": disturbed["timeouts"],
        "good_errors_disturbed": disturbed["errors"],
        "target_met": ratio >= 0.5 and disturbed["timeouts"] == 0 and disturbed["errors"] == 0,
        "heavy_results_per_s": heavy["results_per_s"],
        "heavy_samples_per_request": args.heavy_samples,
        "non_reader_rss_growth_mb": memory["rss_growth_mb"],
        "non_reader_max_output_queued_mb": memory["max_output_queued_mb"],
        "detail": {
            "undisturbed": undisturbed, "disturbed": disturbed, "heavy": heavy,
            "heavy_request_bytes": len(heavy_body) + 17,
            "heavy_inflight_target": args.heavy_inflight,
            "server_during_disturbed": {k: m1[k] - m0[k] for k in
                                        ("splitcomp_fair_deferrals_total", "overloaded",
                                         "timeouts")},
            "non_reader": memory,
            "model": "resnet20 (random weights) cut after layer2, fp32, one torch thread",
            "seconds": time.perf_counter() - t0,
        },
    }
    print(json.dumps({k: v for k, v in out.items() if k != "detail"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
