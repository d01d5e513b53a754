"""The edge without torch against the torch edge, in one run: ONNX head + numpy encoder vs the
torch head + torch encoder, on the shared sets; prints JSON.

    SPLITCOMP_DATA=../shared/data .venv/bin/python benchmarks/edge_export.py [--cifar 1000]

Per (model, cut, codec): the exported ONNX head's largest difference from the torch head, the
top-1 the server computes from each path's bytes (``codecs.decode`` + the tail: what a
deployment runs) and how often they agree, bytes per sample of each path, and per-image edge
time (head + encode, batch of one, one thread each: ``torch.set_num_threads(1)``, onnxruntime
``intra_op_num_threads=1``). ``server_check``: the first images sent through a real server on
127.0.0.1 by :class:`splitcomp.edge.EdgeClient`. ``install``: bytes on disk of the edge
client's dependencies and of a torch install (files each distribution's RECORD lists).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from splitcomp import codecs
from splitcomp.data import load_dataset
from splitcomp.edge import EdgeClient
from splitcomp.edge.export import export_edge, zoo_source
from splitcomp.edge.preprocess import load_uint8, normalize
from splitcomp.partition import split
from splitcomp.runtime import Deployment, Server
from splitcomp.zoo import load_model, model_config

CASES = [("resnet20", "layer2", "cifar10"), ("mobilenet_v2", "features.14", "imagenet")]
CODECS = ("slicer", "rans")
#: the edge client's distributions (the proposed ``splitcomp[edge]`` closure's roots)
EDGE_ROOTS = ("numpy", "constriction", "pcodec", "zstandard", "pillow", "websockets",
              "onnxruntime")
TORCH_ROOTS = ("numpy", "constriction", "pcodec", "zstandard", "pillow", "websockets", "torch")


def _closure(roots: tuple[str, ...]) -> dict[str, int]:
    """distribution -> bytes of its installed files, for ``roots`` and what they require
    (markers evaluated here, extras not followed)."""
    from packaging.requirements import Requirement

    seen: dict[str, int] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = sum(f.size or 0 for f in (dist.files or []))
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def install_sizes() -> dict:
    edge, tor = _closure(EDGE_ROOTS), _closure(TORCH_ROOTS)
    mb = 1 / 2**20
    return {
        "edge_MiB": round(sum(edge.values()) * mb, 1),
        "torch_edge_MiB": round(sum(tor.values()) * mb, 1),
        "edge_dists": {k: round(v * mb, 2) for k, v in sorted(edge.items())},
        "torch_dists": {k: round(v * mb, 2) for k, v in sorted(tor.items()) if k not in edge},
        "how": "sum of the sizes of the files each installed distribution's RECORD lists, "
               "over the roots and their requirements",
        "versions": {k: md.version(k) for k in ("onnxruntime", "torch", "numpy")},
    }


def _timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t0


def run_case(model_name: str, at: str, data: str, limit: int | None, server_n: int,
             tmp: Path) -> list[dict]:
    cfg = model_config(model_name)
    model = load_model(model_name, None).eval()
    _head, tail = split(model, at, (torch.zeros(1, *cfg.input_size),))
    ds = load_dataset(data, cfg.preprocess(), limit=limit)
    pre = cfg.preprocess()
    out = []
    for name in CODECS:
        codec = codecs.get(name)
        src = zoo_source(model_name, at, codec, model=model, deployment=model_name)
        export_edge(src, tmp / f"{model_name}-{name}")
        client = EdgeClient(tmp / f"{model_name}-{name}", threads=1)
        spec = client.manifest.input
        rec = {"t_head": [], "t_enc": [], "o_head": [], "o_enc": []}
        streams: dict[str, list[bytes]] = {"torch": [], "onnx": []}
        err = scale = 0.0
        for path, _label in ds.samples:
            xt = pre(path)[None]  # torch preprocessing, as the torch client's data path
            with torch.inference_mode():
                ft, th = _timed(src.module, xt)
            bt, te = _timed(codec.encode, list(ft))
            xn = normalize(load_uint8(path, spec)[None], spec)
            fn, oh = _timed(client.head.run, None, {spec.name: xn})
            bn, oe = _timed(client.encode_features, tuple(fn))
            err = max(err, float(np.abs(fn[0] - ft[0].numpy()).max()))
            scale = max(scale, float(ft[0].abs().max()))
            streams["torch"].append(bt)
            streams["onnx"].append(bn)
            for k, v in zip(("t_head", "t_enc", "o_head", "o_enc"), (th, te, oh, oe),
                            strict=True):
                rec[k].append(v)
        labels = ds.labels
        top1 = {}
        for k, ss in streams.items():  # what the server does: decode, batch, run the tail
            feats = torch.cat([codecs.decode(s)[0] for s in ss])
            with torch.inference_mode():
                top1[k] = torch.cat([tail(feats[i:i + 100]).argmax(1)
                                     for i in range(0, len(feats), 100)])
        n = len(labels)
        bytes_t = float(np.mean([len(s) for s in streams["torch"]]))
        bytes_o = float(np.mean([len(s) for s in streams["onnx"]]))
        ms = {k: round(statistics.median(v) * 1e3, 3) for k, v in rec.items()}
        case = {
            "model": model_name, "split": at, "codec": name, "params": codec.params,
            "data": data, "images": n,
            "head_max_abs_diff": err, "head_max_abs": scale,
            "top1_agreement": float((top1["torch"] == top1["onnx"]).float().mean()),
            "top1_torch": float((top1["torch"] == labels).float().mean()),
            "top1_onnx": float((top1["onnx"] == labels).float().mean()),
            "bytes_per_sample_torch": round(bytes_t, 1),
            "bytes_per_sample_onnx": round(bytes_o, 1),
            "bytes_rel_diff": round((bytes_o - bytes_t) / bytes_t, 5),
            "identical_streams": sum(a == b for a, b in zip(*streams.values(), strict=True)),
            "edge_ms_median": {"torch_head": ms["t_head"], "torch_encode": ms["t_enc"],
                               "torch_total": round(ms["t_head"] + ms["t_enc"], 3),
                               "onnx_head": ms["o_head"], "numpy_encode": ms["o_enc"],
                               "onnx_total": round(ms["o_head"] + ms["o_enc"], 3)},
        }
        if server_n:
            case["server_check"] = server_check(client, tail, ds, server_n, codec.name,
                                                model_name)
        out.append(case)
        print(json.dumps({k: case[k] for k in ("model", "codec", "top1_agreement",
                                               "bytes_rel_diff")}), file=sys.stderr)
    return out


def server_check(client: EdgeClient, tail, ds, n: int, codec: str, name: str) -> dict:
    """The first ``n`` images through a real server: its top-1 against the local decode +
    tail of the same bytes."""
    srv = Server([Deployment(name, tail, codecs=[codec])], "127.0.0.1", 0).start_in_thread()
    agree = 0
    try:
        client.url = srv.url
        for path, _ in ds.samples[:n]:
            ans = client.infer(path)
            (feats,) = codecs.decode(client.encode(path))
            with torch.inference_mode():
                agree += int(ans.top1[0] == int(tail(feats).argmax(1)[0]))
    finally:
        client.close()
        client.url = None
        srv.stop(grace_s=2.0)
    return {"images": n, "server_top1_equals_local": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 test images (spread)")
    ap.add_argument("--imagenet", type=int, default=None, help="ImageNet samples (all: 500)")
    ap.add_argument("--server", type=int, default=50, help="images through a real server")
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = {"install": install_sizes(), "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, at, data in CASES:
            limit = args.cifar if data == "cifar10" else args.imagenet
            report["cases"] += run_case(model_name, at, data, limit, args.server, Path(tmp))
    report["threads"] = {"torch": torch.get_num_threads(), "onnxruntime_intra_op": 1}
    report["settings"] = {"cifar": args.cifar, "imagenet": args.imagenet, "server": args.server}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
