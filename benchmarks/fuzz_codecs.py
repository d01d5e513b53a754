"""Long decoder fuzz run over every registered codec (the CI suite runs a short one).

    python benchmarks/fuzz_codecs.py [--seconds 60] [--json PATH]
    python benchmarks/fuzz_codecs.py --deployment resnet20:layer2 --inputs 1000000 \
        --max-decode-ms 1000   # through a deployment's own decode path and limits

Mutates valid bitstreams (byte edits, truncation, splices, with the CRC recomputed so the
codec's own parser is reached) and random bytes. Every decode must either raise
``BitstreamError`` or return tensors within the decode limits; anything else (another
exception, a crash, a decode slower than ``--max-decode-ms``) is reported as a failure.
With ``--deployment MODEL:CUT`` every input goes through what a server runs on a request:
the deployment's header check (its own limits, derived from the tail's shapes and batch
limit) and decode; a typed refusal (``BitstreamError`` or the runtime's ``RequestError``)
counts as rejected. Seeds then include streams of the deployment's own input shape.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp import codecs  # noqa: E402
from splitcomp.codecs import BitstreamError, DecodeLimits  # noqa: E402
from splitcomp.runtime.errors import RequestError  # noqa: E402

LIMITS = DecodeLimits(max_elements=1 << 20, max_tensors=8, max_bytes=1 << 22)


def seeds(name: str, extra: tuple[int, ...] | None = None) -> list[bytes]:
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 8, 8, 8), (1, 32, 16, 16), (2, 5, 3), (1, 1, 576), (7,)]
    if extra is not None:
        shapes += [extra, (4, *extra[1:])]
    out = []
    for i, s in enumerate(shapes):
        x = torch.randn(s, generator=g) * (1 + i)
        try:
            out.append(codecs.get(name).encode(x.relu() if i % 2 else x))
        except ValueError:  # a shape this codec does not code (tokenwise: (1, T, H))
            continue
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    body = bytearray(data[:-4])
    op = rng.randrange(4)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif op == 1:
        body = body[: rng.randrange(len(body) + 1)]
    elif op == 2:
        a = rng.randrange(len(body))
        body[a:a] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        a, b = sorted(rng.randrange(len(body)) for _ in range(2))
        del body[a:b]
    body = bytes(body)
    return body + struct.pack("<I", zlib.crc32(body)) if rng.random() < 0.9 else body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-decode-ms", type=float, default=500.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--deployment", metavar="MODEL:CUT",
                    help="decode as this zoo model's deployment at this cut does")
    ap.add_argument("--inputs", type=int, help="stop after this many inputs (all codecs "
                    "together) instead of --seconds")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    names = codecs.available()
    limits, decode, shape = LIMITS, None, None
    if args.deployment:
        from splitcomp.partition import split
        from splitcomp.runtime.deployment import Deployment
        from splitcomp.zoo import load_model

        model, cut = args.deployment.split(":")
        net = load_model(model, "random").eval()
        head, tail = split(net, cut, (torch.zeros(1, *net.default_cfg.input_size),))
        dep = Deployment("fuzz", tail)
        limits, decode = dep.decode_limits, dep.decode
        with torch.inference_mode():
            shape = tuple(head(torch.zeros(1, *net.default_cfg.input_size))[0].shape)
    per_codec = args.seconds / len(names)
    per_codec_inputs = -(-args.inputs // len(names)) if args.inputs else None
    report: dict = {"deployment": args.deployment, "limits": limits.__dict__}
    for name in names:
        pool = seeds(name, shape)
        stats = {"cases": 0, "rejected": 0, "decoded": 0, "failures": [], "slowest_ms": 0.0}
        end = time.monotonic() + per_codec
        while (stats["cases"] < per_codec_inputs if per_codec_inputs
               else time.monotonic() < end):
            data = mutate(rng, rng.choice(pool)) if rng.random() < 0.98 else bytes(
                rng.randrange(256) for _ in range(rng.randint(0, 64)))
            t0 = time.perf_counter()
            try:
                out = decode(data) if decode else codecs.decode(data, limits=limits)
                assert sum(t.numel() for t in out) <= limits.max_elements
                stats["decoded"] += 1
            except (BitstreamError, RequestError):
                stats["rejected"] += 1
            except Exception as e:  # noqa: BLE001 - anything else is a finding
                if len(stats["failures"]) < 5:
                    stats["failures"].append(f"{type(e).__name__}: {e} :: {data.hex()[:200]}")
            ms = 1e3 * (time.perf_counter() - t0)
            stats["slowest_ms"] = max(stats["slowest_ms"], ms)
            if ms > args.max_decode_ms and len(stats["failures"]) < 5:
                stats["failures"].append(f"slow decode {ms:.0f} ms :: {data.hex()[:200]}")
            stats["cases"] += 1
        report[name] = stats
    runs = [s for s in report.values() if isinstance(s, dict) and "cases" in s]
    report["inputs"] = sum(s["cases"] for s in runs)
    report["slowest_ms"] = max(s["slowest_ms"] for s in runs)
    report["ok"] = all(not s["failures"] for s in runs)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
