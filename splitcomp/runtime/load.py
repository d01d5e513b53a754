"""Load generator: N concurrent asyncio clients against a server, split vs full offload.

Requests carry precomputed bitstreams (the head and encoder run once per image before the
clock starts), so the figures are those of the server and the wire. Server compute per request
comes from the timings returned with each result: ``decode_us + tail_us / batch_size`` (the
tail call is shared by its batch). The full-offload baseline sends raw uint8 pixels (see
:mod:`.fulloffload`) to a deployment that runs the whole model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import codecs as _codecs
from .client import AsyncSplitClient
from .fulloffload import FULL_OFFLOAD_CODEC, zoo_full_offload


@dataclass
class Sample:
    """One answered request."""

    index: int  #: which bitstream (image) it carried
    latency_s: float
    bytes_sent: int
    bytes_received: int
    batch_size: int
    queue_us: int
    decode_us: int
    tail_us: int
    top1: int  #: argmax of the result


async def drive(url: str, deployment: str, bitstreams: Sequence[bytes], clients: int,
                requests: int, *, token: str | None = None, warmup: int = 0,
                timeout_s: float = 120.0) -> tuple[list[Sample], float]:
    """``clients`` connections sending ``requests`` bitstreams in all (cycled), back to back.

    ``warmup`` requests per client go first and are not counted. Returns the answered
    requests and the wall time of the counted part.
    """
    conns = [AsyncSplitClient(url, None, "fp32", deployment, token=token, timeout_s=timeout_s)
             for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in conns))
    try:
        async def warm(i: int, c: AsyncSplitClient) -> None:
            for k in range(warmup):
                await c.infer_encoded(bitstreams[(i + k * clients) % len(bitstreams)])

        await asyncio.gather(*(warm(i, c) for i, c in enumerate(conns)))
        counter = iter(range(requests))
        out: list[Sample] = []

        async def run(c: AsyncSplitClient) -> None:
            for k in counter:
                idx = k % len(bitstreams)
                r = await c.infer_encoded(bitstreams[idx])
                t = r.timing
                out.append(Sample(idx, r.latency_s, r.bytes_sent, r.bytes_received,
                                  t.batch_size, t.queue_us, t.decode_us, t.tail_us,
                                  int(r.outputs[0].reshape(-1).argmax())))

        t0 = time.perf_counter()
        await asyncio.gather(*(run(c) for c in conns))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return out, wall


def summarize(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    """Throughput, latency percentiles, wire bytes, server compute and batch sizes."""
    lat = np.array([s.latency_s for s in samples]) * 1e3
    bs = np.array([s.batch_size for s in samples])
    compute = np.array([s.decode_us + s.tail_us / max(s.batch_size, 1) for s in samples])
    return {
        "requests": len(samples),
        "wall_s": wall_s,
        "requests_per_s": len(samples) / wall_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "wire_bytes_per_request": float(np.mean([s.bytes_sent for s in samples])),
        "response_bytes_per_request": float(np.mean([s.bytes_received for s in samples])),
        "server_compute_us_per_request": float(compute.mean()),
        "decode_us_per_request": float(np.mean([s.decode_us for s in samples])),
        "queue_us_mean": float(np.mean([s.queue_us for s in samples])),
        "batch_size_mean": float(bs.mean()),
        "batch_size_max": int(bs.max()),
        "batch_size_hist": {int(k): int(v) for k, v in zip(*np.unique(bs, return_counts=True),
                                                           strict=True)},
    }


def top1_by_image(samples: Sequence[Sample], n: int) -> list[int | None]:
    """The first answer received for each of ``n`` images (None when never sent)."""
    out: list[int | None] = [None] * n
    for s in samples:
        if out[s.index] is None:
            out[s.index] = s.top1
    return out


def encode_all(fn: nn.Module | None, codec: _codecs.Codec, images: torch.Tensor) -> list[bytes]:
    """One bitstream per image: ``codec(fn(image))`` (``fn`` None: the image as it is)."""
    out = []
    with torch.inference_mode():
        for x in images:
            x = x.unsqueeze(0)
            feats = fn(x) if fn is not None else x
            if isinstance(feats, torch.Tensor):
                feats = (feats,)
            out.append(codec.encode(list(feats)))
    return out


@dataclass
class LoadSetup:
    """Images and models for a load run: the model, its head, and the bitstreams of both arms."""

    model_name: str
    split: str
    codec: str
    params: dict[str, Any]
    labels: torch.Tensor
    local_top1: torch.Tensor  #: the whole model's prediction per image, run locally
    split_bits: list[bytes]
    full_bits: list[bytes]
    raw_image_bytes: int  #: uint8 pixels per image (what full offload sends, less framing)
    fp32_feature_bytes: int  #: the crossing features as fp32, per image
    head_ms: float  #: mean head + encode time per image on this machine
    deployments: list  #: [split deployment, full-offload deployment]


def prepare(model_name: str, split: str, data: str | Sequence[str], *, codec: str = "slicer",
            params: dict[str, Any] | None = None, weights: str | None = "default",
            limit: int | None = None, max_batch_size: int = 32, max_wait_ms: float = 2.0,
            name: str | None = None) -> LoadSetup:
    """Load ``limit`` images of each ``data`` source, cut the model, precompute both arms'
    bitstreams."""
    from ..data import load_dataset
    from ..partition import split as split_model
    from ..zoo import load_model, model_config
    from .deployment import Deployment

    cfg = model_config(model_name)
    pre = cfg.preprocess()
    sets = [load_dataset(d, pre, limit=limit).preload()
            for d in ([data] if isinstance(data, str) else data)]
    pixels = torch.stack([ds.image_uint8(i) for ds in sets for i in range(len(ds))])
    labels = torch.cat([ds.labels for ds in sets])
    x = pre.normalize(pixels)
    model = load_model(model_name, None if weights == "default" else (weights or "random")).eval()
    head, tail = split_model(model, split, (x[:1],))
    with torch.inference_mode():
        local = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)]).argmax(1)
        feats = head(x[:1])
    feats = (feats,) if isinstance(feats, torch.Tensor) else tuple(feats)
    c = _codecs.get(codec, **(params or {}))
    t0 = time.perf_counter()
    split_bits = encode_all(head, c, x)
    head_ms = (time.perf_counter() - t0) / len(x) * 1e3
    full_bits = encode_all(None, _codecs.get(FULL_OFFLOAD_CODEC), pixels)
    name = name or model_name
    opts = dict(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
    deps = [Deployment(name, tail, **opts),
            zoo_full_offload(model_name, model=model, name=f"{name}-full", **opts)]
    return LoadSetup(model_name, split, codec, dict(params or {}), labels, local,
                     split_bits, full_bits, pixels[0].numel(),
                     sum(f.numel() * 4 for f in feats), head_ms, deps)


def run_arms(url: str, setup: LoadSetup, clients: int, requests: int, *,
             token: str | None = None, warmup: int = 1, full_offload: bool = True,
             full_requests: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Split then full offload against ``url``, one after the other; a JSON-able report.

    ``full_requests``: requests of the full-offload arm (default ``requests``; it is slow).
    """
    name = name or setup.model_name
    n = len(setup.labels)
    report: dict[str, Any] = {
        "model": setup.model_name, "split_at": setup.split, "codec": setup.codec,
        "params": setup.params, "clients": clients, "images": n,
        "raw_image_bytes": setup.raw_image_bytes,
        "fp32_feature_bytes": setup.fp32_feature_bytes,
        "head_encode_ms_per_image": setup.head_ms,
        "top1_local": float((setup.local_top1 == setup.labels).float().mean() * 100),
    }
    samples, wall = asyncio.run(drive(url, name, setup.split_bits, clients, requests,
                                      token=token, warmup=warmup))
    report["split"] = summarize(samples, wall)
    pred = top1_by_image(samples, n)
    seen = [i for i, p in enumerate(pred) if p is not None]
    report["top1_split"] = 100.0 * sum(pred[i] == int(setup.labels[i]) for i in seen) / len(seen)
    report["top1_local_same_images"] = 100.0 * sum(
        int(setup.local_top1[i]) == int(setup.labels[i]) for i in seen) / len(seen)
    report["agreement_with_local"] = 100.0 * sum(
        pred[i] == int(setup.local_top1[i]) for i in seen) / len(seen)
    if full_offload:
        samples, wall = asyncio.run(drive(url, f"{name}-full", setup.full_bits, clients,
                                          full_requests or requests, token=token,
                                          warmup=warmup))
        report["full_offload"] = summarize(samples, wall)
        pred = top1_by_image(samples, n)
        seen = [i for i, p in enumerate(pred) if p is not None]
        report["top1_full_offload"] = 100.0 * sum(
            pred[i] == int(setup.labels[i]) for i in seen) / len(seen)
        report["top1_local_full_offload_images"] = 100.0 * sum(
            int(setup.local_top1[i]) == int(setup.labels[i]) for i in seen) / len(seen)
        report["server_light_ratio"] = (
            report["full_offload"]["server_compute_us_per_request"]
            / report["split"]["server_compute_us_per_request"])
    return report


def run_embedded(setup: LoadSetup, clients: int, requests: int, **kwargs: Any) -> dict[str, Any]:
    """Start a server with both deployments in a background thread (the codecs' kernels
    compiled first: not in the figures), run both arms, stop it."""
    from ..codecs import warm_up
    from .server import Server

    warm_up()
    srv = Server(setup.deployments, "127.0.0.1", 0,
                 max_inflight_per_client=1024).start_in_thread()
    try:
        report = run_arms(srv.url, setup, clients, requests, **kwargs)
    finally:
        srv.stop(grace_s=2.0)
    report["server"] = "embedded"
    return report
