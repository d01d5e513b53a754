"""The main job: an embedded server shared by many edge clients, MobileNetV2 split with slicer.

Starts the embedded server in a background thread with two deployments: the tail of
MobileNetV2 cut at ``features.17`` (slicer bitstreams) and the whole model on raw uint8 pixels
(the full-offload baseline). Concurrent asyncio clients send the foolbox ImageNet photos (plus
``../shared/data/imagenet-samples`` when present) and one table compares the two.

``--rate-accuracy`` shows the previous demo instead: a rate/accuracy table over codecs.
"""

from __future__ import annotations

import argparse

import torch

from ..bench.demo import DEMO_SPLIT, run_rate_accuracy, run_serving
from ._checks import build_codec, check_splits
from ._common import at_least, quality_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a few images and requests")
    p.add_argument("--rate-accuracy", action="store_true",
                   help="the rate/accuracy table over codecs instead of the serving demo")
    p.add_argument("--target-drop", type=float, default=0.5,
                   help="(--rate-accuracy) top-1 drop the codecs are tuned to")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 32)")
    p.add_argument("--split", default=DEMO_SPLIT)
    p.add_argument("--quality", type=float, default=None, help="slicer quality knob")


def run(args: argparse.Namespace) -> int:
    at_least("--clients", args.clients)
    build_codec("slicer", {}, args.quality)  # a quality out of range: now
    if args.split != DEMO_SPLIT:
        check_splits("mobilenet_v2", [args.split])
    torch.set_grad_enabled(False)
    if args.rate_accuracy:
        return run_rate_accuracy(quick=args.quick, target_drop=args.target_drop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # server, clients and heads share the cores: no oversubscription
    try:
        return run_serving(split=args.split, params=quality_params("slicer", args.quality),
                           clients=args.clients, quick=args.quick)
    finally:
        torch.set_num_threads(threads)
