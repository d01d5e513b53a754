"""Chaos: good clients under load while the server is killed (SIGKILL) and hostile clients run.

* ``vision``: ResNet-20 (default weights) cut after layer2, served by ``splitcomp serve`` in
  its own process on 127.0.0.1 (max batch 32, max wait 2 ms, one torch thread,
  ``--max-frame-bytes`` 1 MiB). ``--clients`` good clients (:class:`SplitClient`, one thread
  each, one request in flight, fp32 bitstreams of 64 fixed inputs whose local tail outputs are
  known) run ``--seconds`` undisturbed, then ``--seconds`` of chaos against the same server:
  at a third of it the server is killed with SIGKILL and started again on the same port,
  while hostile clients run throughout: ``bad_frames`` (garbage, truncated frames, unknown
  deployments, corrupt bitstreams), ``oversized`` (1.5 MiB frames), ``bombs`` (every stream
  of ``splitcomp.codecs.hostile`` for every codec, claiming the tail's shape at three sizes)
  and ``never_reads`` (a raw socket sending valid requests and never reading an answer).
  Reported per run: the good clients' requests answered, ``lost`` (a request that raised),
  ``wrong`` (an answer other than the local tail's output for that input, beyond float
  rounding), ``duplicate_answers`` (answer frames the good clients received for a request
  already answered), requests/s, p50/p99 latency, the ratio chaos/undisturbed, the time from
  the kill to the new server listening, and the server's peak RSS (VmHWM of each process).
* ``llm``: ``splitcomp serve --llm llama_tiny --llm-split 2`` (seeded random weights) and a
  :class:`RemoteLM` generating ``--llm-tokens`` greedy tokens: once undisturbed, once with
  the server killed (SIGKILL) and restarted after ``--llm-kill-after`` tokens (the client
  replays its steps on SESSION_NOT_FOUND); the tokens must equal the undisturbed run and the
  unsplit model's.

    python benchmarks/chaos.py [--clients 8] [--seconds 20] [--no-llm] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLI = "import sys; from splitcomp.cli import main; sys.exit(main(sys.argv[1:]))"
ID_BASE = 1 << 40  #: good client k uses request ids k * ID_BASE + n: unique across clients
DEPLOYMENT = "resnet20"


# -- the server process ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ServerProcess:
    """``splitcomp serve ARGS --port PORT`` in its own process, restartable on its port, with
    the peak RSS of every incarnation (polled, since a killed one cannot be asked)."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.peak_mb: dict[int, float] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def start(self) -> str:
        from splitcomp.cli.serve import read_listening_url

        cmd = [sys.executable, "-c", CLI, "serve", *self.args, "--host", "127.0.0.1",
               "--port", str(self.port)]
        for _ in range(20):  # the killed one's port may take a moment to be free
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            url = read_listening_url(self.proc.stdout)
            if url is not None:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                self.url = url
                return url
            self.proc.wait(30)
            time.sleep(0.2)
        raise RuntimeError(f"splitcomp serve {' '.join(self.args)} did not start")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.proc is not None
        self.peak_mb[self.proc.pid] = max(self.peak_mb.get(self.proc.pid, 0.0),
                                          _hwm_mb(self.proc.pid))
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.peak_mb[self.proc.pid] = max(self.peak_mb.get(self.proc.pid, 0.0),
                                              _hwm_mb(self.proc.pid))
            self.proc.terminate()
            self.proc.wait(30)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            p = self.proc
            if p is not None and p.poll() is None:
                self.peak_mb[p.pid] = max(self.peak_mb.get(p.pid, 0.0), _hwm_mb(p.pid))


# -- good clients ----------------------------------------------------------------------------
class AnswerCounter:
    """Counts answer frames per request id as the runtime client parses them (wraps the
    protocol module the client module uses; everything else goes through)."""

    def __init__(self) -> None:
        from splitcomp.runtime import client as client_mod

        self.counts: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self._module = client_mod
        self._protocol = client_mod.P
        counter = self

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(counter._protocol, name)

            def parse_response(self, frame: bytes) -> Any:
                resp = counter._protocol.parse_response(frame)
                if resp.request_id >= ID_BASE:
                    with counter.lock:
                        counter.counts[resp.request_id] += 1
                return resp

        client_mod.P = Counting()  # type: ignore[assignment]

    def reset(self) -> None:
        """Forget the ids seen (each run's clients number their requests from 1 again)."""
        with self.lock:
            self.counts.clear()

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.counts.values() if n > 1)

    def close(self) -> None:
        self._module.P = self._protocol


def _good_client(k: int, url: str, bits: list[bytes], refs: list[torch.Tensor], until: float,
                 out: dict) -> None:
    from splitcomp.runtime import SplitClient

    lat, t_start, wrong, lost, errors, max_diff = [], [], 0, 0, collections.Counter(), 0.0
    with SplitClient(url, None, "fp32", DEPLOYMENT, timeout_s=60.0, retries=20) as c:
        n = 0
        while time.monotonic() < until:
            i = (k * 7 + n) % len(bits)
            n += 1
            t0 = time.perf_counter()
            try:
                r = c.infer_encoded(bits[i], request_id=k * ID_BASE + n)
            except Exception as e:  # noqa: BLE001 - counted: a lost request
                lost += 1
                errors[type(e).__name__] += 1
                continue
            lat.append(time.perf_counter() - t0)
            t_start.append(t0)
            diff = float((r.outputs[0] - refs[i]).abs().max())
            max_diff = max(max_diff, diff)
            if not torch.allclose(r.outputs[0], refs[i], rtol=1e-4, atol=1e-4):
                wrong += 1
        out[k] = {"lat": lat, "t": t_start, "wrong": wrong, "lost": lost, "errors": errors,
                  "max_diff": max_diff, "reconnects": c.client.reconnects}


def run_good(url: str, clients: int, seconds: float, bits: list[bytes],
             refs: list[torch.Tensor], counter: AnswerCounter,
             during: Any = None) -> dict:
    """``clients`` good clients for ``seconds``; ``during(t0)`` runs in this thread meanwhile."""
    counter.reset()
    out: dict[int, dict] = {}
    t0 = time.monotonic()
    until = t0 + seconds
    threads = [threading.Thread(target=_good_client, args=(k + 1, url, bits, refs, until, out))
               for k in range(clients)]
    for t in threads:
        t.start()
    extra = during(t0) if during is not None else None
    for t in threads:
        t.join(seconds + 120)
    wall = time.monotonic() - t0
    lat = np.array([x for o in out.values() for x in o["lat"]]) * 1000
    errors: collections.Counter = collections.Counter()
    for o in out.values():
        errors.update(o["errors"])
    res = {
        "answered": int(lat.size), "lost": sum(o["lost"] for o in out.values()),
        "wrong": sum(o["wrong"] for o in out.values()),
        "duplicate_answers": counter.duplicates(),
        "requests_per_s": lat.size / wall, "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
        "max_abs_diff": max(o["max_diff"] for o in out.values()),
        "reconnects": sum(o["reconnects"] for o in out.values()),
        "errors": dict(errors), "seconds": wall,
    }
    return res if extra is None else {**res, **extra, "_lat": out}


# -- hostile clients -------------------------------------------------------------------------
def _bombs() -> list[bytes]:
    from splitcomp import codecs
    from splitcomp.codecs.hostile import bombs

    sample = (32, 16, 16)
    shapes = [((1 << 28) // (32 * 16 * 16), *sample), (1, 1 << 28), (256, *sample)]
    return [b for name in codecs.available() for s in shapes for b in bombs(name, s).values()]


def _hostile(kind: str, url: str, stop: threading.Event, good_bits: bytes,
             stats: collections.Counter) -> None:
    """One hostile client of ``kind`` until ``stop``; reconnects whenever it is closed."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    from splitcomp.runtime import protocol as P

    rng = random.Random(kind)
    bombs = _bombs() if kind == "bombs" else []
    rid = 0
    while not stop.is_set():
        try:
            with connect(url, max_size=None, open_timeout=5, close_timeout=1,
                         proxy=None) as ws:
                stats[kind + ".connections"] += 1
                while not stop.is_set():
                    rid += 1
                    if kind == "bad_frames":
                        frame = rng.choice([
                            os.urandom(rng.randint(0, 64)),
                            P.encode_request(rid, DEPLOYMENT, good_bits)[:rng.randint(1, 40)],
                            P.encode_request(rid, "nowhere", good_bits),
                            P.encode_request(rid, DEPLOYMENT, good_bits[:100] + os.urandom(50)),
                        ])
                    elif kind == "oversized":
                        frame = bytes(3 << 19)
                    else:
                        frame = P.encode_request(rid, DEPLOYMENT, bombs[rid % len(bombs)])
                    ws.send(frame)
                    stats[kind + ".sent"] += 1
                    try:
                        answer = ws.recv(timeout=10)
                        code = P.parse_response(answer).code
                        stats[f"{kind}.answer.{code.name if code else 'OK'}"] += 1
                    except TimeoutError:
                        stats[kind + ".no_answer"] += 1
                    time.sleep(0.02 if kind != "oversized" else 0.2)
        except (OSError, WebSocketException, P.FrameError):
            stats[kind + ".closed"] += 1
            time.sleep(0.2)


def _never_reads(url: str, stop: threading.Event, good_bits: bytes,
                 stats: collections.Counter) -> None:
    """Valid requests on a raw socket whose answers are never read."""
    from websockets.frames import Frame, Opcode

    from splitcomp.runtime import protocol as P

    host, port = url.removeprefix("ws://").split(":")
    rid = 0
    while not stop.is_set():
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(2.0)
            sock.connect((host, int(port)))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                got = sock.recv(1)
                if not got:
                    raise ConnectionError("closed during the handshake")
                head += got
            stats["never_reads.connections"] += 1
            sock.settimeout(0.5)
            while not stop.is_set():
                rid += 1
                frame = Frame(Opcode.BINARY, P.encode_request(rid, DEPLOYMENT, good_bits))
                try:
                    sock.sendall(frame.serialize(mask=True, extensions=[]))
                    stats["never_reads.sent"] += 1
                except TimeoutError:  # the server stopped reading us
                    stats["never_reads.blocked"] += 1
                    time.sleep(0.1)
                time.sleep(0.005)
        except OSError:
            stats["never_reads.closed"] += 1
            time.sleep(0.2)
        finally:
            sock.close()


# -- the runs --------------------------------------------------------------------------------
def vision(clients: int, seconds: float) -> dict:
    from splitcomp import codecs
    from splitcomp.partition import split
    from splitcomp.zoo import load_model

    model = load_model("resnet20", None).eval()
    head, tail = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    torch.manual_seed(0)
    fp32 = codecs.get("fp32")
    bits, refs = [], []
    with torch.inference_mode():
        for _ in range(64):
            f = head(torch.randn(1, 3, 32, 32))[0]
            bits.append(fp32.encode(f))
            refs.append(tail(f))
    server = ServerProcess(["--model", "resnet20", "--split", "layer2", "--threads", "1",
                            "--max-batch-size", "32", "--max-wait-ms", "2",
                            "--max-frame-bytes", str(1 << 20)])
    counter = AnswerCounter()
    stats: collections.Counter = collections.Counter()
    try:
        url = server.start()
        run_good(url, clients, 2.0, bits, refs, counter)  # warm-up
        server.peak_mb.clear()
        calm = run_good(url, clients, seconds, bits, refs, counter)
        calm_peak = max(server.peak_mb.values())
        print(f"undisturbed: {calm['requests_per_s']:.0f} req/s, p99 {calm['p99_ms']:.1f} ms",
              flush=True)

        def chaos(t0: float) -> dict:
            stop = threading.Event()
            hostile = [threading.Thread(target=_hostile, args=(k, url, stop, bits[0], stats),
                                        daemon=True)
                       for k in ("bad_frames", "oversized", "bombs")]
            hostile.append(threading.Thread(target=_never_reads, args=(url, stop, bits[0], stats),
                                            daemon=True))
            for t in hostile:
                t.start()
            time.sleep(max(t0 + seconds / 3 - time.monotonic(), 0))
            t_kill = time.monotonic()
            server.kill()
            server.start()
            t_back = time.monotonic()
            print(f"killed and restarted: {t_back - t_kill:.1f} s", flush=True)
            time.sleep(max(t0 + seconds - time.monotonic(), 0))
            stop.set()
            for t in hostile:
                t.join(15)
            return {"kill_at_s": t_kill - t0, "restart_s": t_back - t_kill,
                    "_back": t_back}

        wild = run_good(url, clients, seconds, bits, refs, counter, during=chaos)
        back = wild.pop("_back")
        detail = wild.pop("_lat")
        calm_after = np.array([lt for o in detail.values()
                               for lt, t in zip(o["lat"], o["t"], strict=True)
                               if t > back + 1.0]) * 1000
        wild["p99_ms_after_restart"] = float(np.percentile(calm_after, 99)) \
            if calm_after.size else None
        chaos_peak = max(server.peak_mb.values())
    finally:
        counter.close()
        server.close()
    return {
        "clients": clients, "seconds": seconds,
        "undisturbed": calm, "chaos": wild,
        "throughput_ratio": wild["requests_per_s"] / calm["requests_per_s"],
        "p99_ratio": wild["p99_ms"] / calm["p99_ms"],
        "server_peak_rss_mb": {"undisturbed": calm_peak, "chaos": chaos_peak},
        "hostile": dict(sorted(stats.items())),
    }


def llm(tokens: int, kill_after: int) -> dict:
    from splitcomp.llm import greedy_unsplit
    from splitcomp.llm.text import load_lm
    from splitcomp.runtime.llm.client import RemoteLM

    torch.set_num_threads(1)
    model, _ = load_lm("llama_tiny")
    prompt = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(3))
    unsplit, _ = greedy_unsplit(model, prompt, tokens)
    server = ServerProcess(["--llm", "llama_tiny", "--llm-split", "2", "--threads", "1"])
    try:
        url = server.start()
        t0 = time.perf_counter()
        with RemoteLM(model, 2, url, "llama_tiny", timeout_s=60.0) as lm:
            calm = [s.token for s in lm.generate(prompt, tokens)]
        calm_s = time.perf_counter() - t0
        got, t_restart = [], 0.0
        t0 = time.perf_counter()
        with RemoteLM(model, 2, url, "llama_tiny", timeout_s=60.0) as lm:
            for i, step in enumerate(lm.generate(prompt, tokens)):
                got.append(step.token)
                if i + 1 == kill_after:
                    t1 = time.perf_counter()
                    server.kill()
                    server.start()
                    t_restart = time.perf_counter() - t1
            rebuilds, replayed = lm.rebuilds, lm.lm.replayed_tokens
            mismatches = lm.lm.replay_mismatches
        wild_s = time.perf_counter() - t0
    finally:
        server.close()
    return {"model": "llama_tiny (seeded random weights), split 2, fp32 hidden states",
            "prompt_tokens": len(prompt), "new_tokens": tokens, "killed_after": kill_after,
            "tokens_equal_uninterrupted": got == calm, "tokens_equal_unsplit": got == unsplit,
            "uninterrupted_equal_unsplit": calm == unsplit, "distinct_tokens": len(set(got)),
            "rebuilds": rebuilds,
            "replayed_tokens": replayed, "replay_mismatches": mismatches,
            "restart_s": t_restart, "uninterrupted_s": calm_s, "with_kill_s": wild_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="per run (undisturbed, chaos)")
    p.add_argument("--no-llm", action="store_true")
    p.add_argument("--llm-tokens", type=int, default=24)
    p.add_argument("--llm-kill-after", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"vision": vision(args.clients, args.seconds)}
    if not args.no_llm:
        out["llm"] = llm(args.llm_tokens, args.llm_kill_after)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
