"""Decompression bombs: requests under 1 KB that claim huge work, against a real vision server.

    python benchmarks/bombs.py [--claim 268435456] [--json PATH]

For every registered codec, the hostile streams of :mod:`splitcomp.codecs.hostile` (a real
small stream relabeled, a few bytes, an all-zero tensor whose symbols cost nothing, zstd frames
declaring huge sizes, ...), each claiming one of

* ``huge``: a batch of the tail's per-sample shape holding ``--claim`` elements (2**28: the
  codecs' default decode limit);
* ``flat``: one (1, ``--claim``) tensor (rows of one token: the cheapest ``tokenwise`` claim);
* ``max``: the largest request the deployment takes (``max_request_samples`` samples), which is
  decoded and run through the tail.

Server: ResNet-20 (random weights) cut after layer2, in its own process on 127.0.0.1, once
without a codec allow-list (the CLI default) and once with every codec allowed. Per request:
the server process's CPU seconds and its peak RSS growth (``/proc/self/status`` VmHWM, reset
through ``/proc/self/clear_refs``; freed memory goes back to the system:
``MALLOC_MMAP_THRESHOLD_``), the error code the client gets and its wall time.

Decode level: each codec's ``decode`` on the same streams under the deployment's decode
limits, in this process (CPU seconds; peak RSS growth, and the bytes tracemalloc saw).

Target: no request under 1 KB costs the server more than 1 s of CPU or 200 MB of memory
(``target_met``). Against an older checkout (no ``decode_limits``), run with
``PYTHONPATH=<checkout>`` and ``splitcomp/codecs/hostile.py`` copied into it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import torch

CPU_TARGET_S = 1.0
MEM_TARGET_MB = 200.0
_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
_STAT = "BOMBSTAT "


# -- the server process ----------------------------------------------------------------------
def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return 0.0


def _control() -> None:
    """Commands on stdin: ``reset`` (peak RSS := RSS, CPU mark), ``stats`` (since the mark)."""
    mark = [time.process_time(), _status_kb("VmRSS")]
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "reset":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            mark[:] = [time.process_time(), _status_kb("VmRSS")]
            print(_STAT + "{}", flush=True)
        elif cmd == "stats":
            out = {"cpu_s": time.process_time() - mark[0],
                   "mb": max(_status_kb("VmHWM") - mark[1], 0.0) / 1024}
            print(_STAT + json.dumps(out), flush=True)


def serve(allow: bool) -> None:
    """The server process: print its url, serve until stdin closes or SIGTERM."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    import asyncio

    from splitcomp import codecs
    from splitcomp.runtime import Server, zoo_deployment

    dep, _ = zoo_deployment("resnet20", "layer2", weights="random", name="r20",
                            codecs=codecs.available() if allow else None)
    threading.Thread(target=_control, daemon=True).start()
    server = Server(dep, "127.0.0.1", 0, request_timeout_s=600.0)
    asyncio.run(server.serve_forever(announce=True))


class ServerProcess:
    """A bombs server in its own process, with its stats channel."""

    def __init__(self, allow: bool) -> None:
        from splitcomp.cli.serve import read_listening_url

        args = [sys.executable, __file__, "--serve"] + (["--allow"] if allow else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **_MMAP_ENV})
        url = read_listening_url(self.proc.stdout)
        if url is None:
            self.close()
            raise RuntimeError("server did not start")
        self.url = url

    def command(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited")
            if line.startswith(_STAT):
                return json.loads(line[len(_STAT):])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# -- the streams -----------------------------------------------------------------------------
def claims(sample: tuple[int, ...], max_samples: int, claim: int) -> dict[str, tuple[int, ...]]:
    per = math.prod(sample)
    return {"huge": (max(claim // per, 1), *sample), "flat": (1, claim),
            "max": (max_samples, *sample)}


def all_bombs(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str, str, bytes]]:
    """(codec, claim, kind, stream) of every hostile stream under 1 KB."""
    from splitcomp import codecs
    from splitcomp.codecs.hostile import bombs

    out = []
    for name in codecs.available():
        for claim, shape in shapes.items():
            for kind, data in bombs(name, shape).items():
                out.append((name, claim, kind, data))
    return out


# -- measurements ----------------------------------------------------------------------------
def over_server(items: list, allow: bool, timeout_s: float) -> list[dict]:
    from splitcomp.runtime import ServerError, SplitClient

    srv = ServerProcess(allow)
    rows = []
    try:
        with SplitClient(srv.url, None, "fp32", "r20", timeout_s=timeout_s, retries=0) as client:
            for name, claim, kind, data in items:
                srv.command("reset")
                t0 = time.perf_counter()
                try:
                    client.infer_encoded(data)
                    code = "ok"
                except ServerError as e:
                    code = e.code.name
                except Exception as e:  # a timeout or a lost connection: the server choked
                    code = type(e).__name__
                wall = time.perf_counter() - t0
                st = srv.command("stats")
                rows.append({"codec": name, "claim": claim, "kind": kind, "bytes": len(data),
                             "code": code, "cpu_s": st["cpu_s"], "mb": st["mb"], "wall_s": wall})
                print(f"  {'allow' if allow else 'any  '} {name:10} {claim:4} {kind:10} "
                      f"{len(data):4} B  {code:18} cpu {st['cpu_s']:7.3f} s  {st['mb']:8.1f} MB",
                      file=sys.stderr, flush=True)
    finally:
        srv.close()
    return rows


def decode_level(items: list, limits) -> list[dict]:
    from splitcomp import codecs

    rows = []
    for name, claim, kind, data in items:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        tracemalloc.start()
        c0 = time.process_time()
        try:
            codecs.decode(data, limits)
            res = "ok"
        except codecs.BitstreamError:
            res = "BitstreamError"
        except Exception as e:  # noqa: BLE001 - what a decoder must never raise is reported
            res = type(e).__name__
        cpu = time.process_time() - c0
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rows.append({"codec": name, "claim": claim, "kind": kind, "bytes": len(data),
                     "result": res, "cpu_s": cpu,
                     "mb": max(_status_kb("VmHWM") - base, 0.0) / 1024, "traced_mb": traced})
    return rows


def worst(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        w = out.setdefault(r["codec"], {"cpu_s": 0.0, "mb": 0.0})
        w["cpu_s"] = round(max(w["cpu_s"], r["cpu_s"]), 4)
        w["mb"] = round(max(w["mb"], r["mb"], r.get("traced_mb", 0.0)), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claim", type=int, default=1 << 28, help="elements a huge claim holds")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allow", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.allow)
        return
    if any(k not in os.environ for k in _MMAP_ENV):  # freed memory must leave the process
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MMAP_ENV})
    torch.set_num_threads(1)
    from splitcomp.runtime import zoo_deployment

    t0 = time.perf_counter()
    dep, _ = zoo_deployment("resnet20", "layer2", weights="random", name="r20")
    sample = dep.input_specs[0].sample_shape
    limits = getattr(dep, "decode_limits", dep.limits)
    items = all_bombs(claims(sample, dep.max_request_samples, args.claim))
    dec = decode_level(items, limits)
    served = {"any_codec": over_server(items, False, args.timeout),
              "allow_list": over_server(items, True, args.timeout)}
    per_codec = {k: worst(v) for k, v in served.items()}
    per_codec["decode_level"] = worst(dec)
    all_rows = [r for v in served.values() for r in v] + dec
    out = {
        "target": {"cpu_s": CPU_TARGET_S, "mb": MEM_TARGET_MB, "request_bytes_below": 1024},
        "target_met": all(r["cpu_s"] <= CPU_TARGET_S and r["mb"] <= MEM_TARGET_MB
                          and r.get("traced_mb", 0.0) <= MEM_TARGET_MB for r in all_rows),
        "requests": len(all_rows),
        "largest_request_bytes": max(r["bytes"] for r in all_rows),
        "worst_per_codec": per_codec,
        "error_codes": {k: sorted({r["code"] for r in v}) for k, v in served.items()},
        "detail": {
            "server": "resnet20 (random) cut after layer2, 127.0.0.1, one torch thread",
            "decode_limits": {"max_elements": limits.max_elements,
                              "max_tensors": limits.max_tensors, "max_ndim": limits.max_ndim},
            "claim_elements": args.claim, "served": served, "decode_level": dec,
            "seconds": time.perf_counter() - t0,
        },
    }
    print(json.dumps({k: v for k, v in out.items() if k != "detail"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
