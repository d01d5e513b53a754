"""``splitcomp load``: N concurrent clients with real images, split vs full offload.

Starts an embedded server with both deployments (``<name>`` and ``<name>-full``) unless
``--url`` is given, in which case that server must serve both (the baseline is skipped with
``--no-full-offload``). Prints a summary and writes the JSON report with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ._checks import (
    build_codec,
    check_reachable,
    check_splits,
    load_checked_model,
    open_data,
    zoo_config,
)
from ._common import add_force, at_least, check_output, quality_params, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    p.add_argument("--requests", type=int, default=512, help="requests per arm in all")
    p.add_argument("--data", default=["foolbox-imagenet"], nargs="+",
                   help="datasets: foolbox-imagenet, imagenet, cifar10 or folders")
    p.add_argument("--limit", type=int, default=None, help="images to use (default all)")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--split", default="features.14", help="cut point (node name)")
    p.add_argument("--codec", default="slicer")
    p.add_argument("--quality", type=float, default=None, help="the codec's quality knob")
    p.add_argument("--weights", default="default", help="default, random or a path")
    p.add_argument("--url", default=None, help="a running server (default: embedded)")
    p.add_argument("--name", default=None, help="deployment name (default: the model's)")
    p.add_argument("--token", default=None)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (server and clients share this process)")
    p.add_argument("--full-requests", type=int, default=None,
                   help="requests of the full-offload arm (default: --requests)")
    p.add_argument("--no-full-offload", action="store_true", help="skip the baseline")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    add_force(p)


def format_report(r: dict) -> str:
    """A few lines: both arms side by side."""
    lines = [f"{r['model']} cut at {r['split_at']}, codec {r['codec']} {r['params']}, "
             f"{r['clients']} clients, {r['images']} images"]
    arms = [("split", r["split"])] + ([("full offload", r["full_offload"])]
                                      if "full_offload" in r else [])
    lines.append(f"{'':14}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'bytes/req':>11}"
                 f"{'server us/req':>15}{'batch':>7}")
    for label, a in arms:
        lines.append(f"{label:14}{a['requests_per_s']:11.1f}{a['p50_ms']:9.1f}{a['p99_ms']:9.1f}"
                     f"{a['wire_bytes_per_request']:11.0f}"
                     f"{a['server_compute_us_per_request']:15.0f}{a['batch_size_mean']:7.1f}")
    if "server_light_ratio" in r:
        lines.append(f"server-light ratio (full offload / split compute): "
                     f"{r['server_light_ratio']:.1f}x")
    lines.append(f"top-1 local {r['top1_local_same_images']:.1f}%, split {r['top1_split']:.1f}%")
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> None:
    """Everything checkable before the images are read and encoded."""
    for flag in ("--clients", "--requests", "--limit", "--full-requests", "--max-batch-size"):
        at_least(flag, getattr(args, flag[2:].replace("-", "_")))
    check_output(args.json, args.force)
    cfg = zoo_config(args.model)
    build_codec(args.codec, {}, args.quality)
    for d in args.data:
        open_data(d, cfg, args.limit)
    if args.url:
        check_reachable(args.url)
    model = load_checked_model(args.model, None if args.weights == "default" else args.weights)
    check_splits(args.model, [args.split], model)


def run(args: argparse.Namespace) -> int:
    from ..runtime.load import prepare, run_arms, run_embedded

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    _check(args)
    setup = prepare(args.model, args.split, args.data, codec=args.codec,
                    params=quality_params(args.codec, args.quality), weights=args.weights,
                    limit=args.limit, max_batch_size=args.max_batch_size,
                    max_wait_ms=args.max_wait_ms, name=args.name)
    kw = dict(full_offload=not args.no_full_offload, full_requests=args.full_requests,
              token=args.token, name=args.name)
    if args.url:
        report = run_arms(args.url, setup, args.clients, args.requests, **kw)
        report["server"] = args.url
    else:
        report = run_embedded(setup, args.clients, args.requests, **kw)
    print(format_report(report))
    if args.json:
        write_json(report, args.json, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
