"""Rate/accuracy table: each codec's bits per element at <= a top-1 drop, per model and cut.

    python benchmarks/rate_accuracy.py [--json PATH] [--target-drop 0.5] [--quick]

ResNet-20 on the full CIFAR-10 test set (cut after layer1 and layer2) and MobileNetV2 on the
shared ImageNet samples (two cuts). Each codec's setting is chosen on a fixed calibration
subset; accuracy and bytes are reported on the disjoint rest (same images for every codec).
Bits per element count every byte of every per-sample bitstream, headers and CRC included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp.bench.codec_eval import summarize  # noqa: E402
from splitcomp.bench.rate_accuracy import rate_accuracy  # noqa: E402

JOBS = [
    # model, data, cuts, images (None = all), calibration images
    ("resnet20", "cifar10", ["layer1", "layer2"], None, 2500),
    ("mobilenet_v2", "imagenet", ["features.7", "features.14"], None, 250),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--target-drop", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="2,000 CIFAR / 200 ImageNet images")
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--codecs", nargs="*", help="only these codecs")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from splitcomp.bench.rate_accuracy import DEFAULT_ROWS

    rows = [r for r in DEFAULT_ROWS if not args.codecs or r[0] in args.codecs]
    results = []
    t0 = time.time()
    for model, data, cuts, limit, calib in JOBS:
        if args.models and model not in args.models:
            continue
        if args.quick:
            limit, calib = (2000, 500) if data == "cifar10" else (200, 80)
        results += rate_accuracy(model, data, cuts, rows=rows, target_drop=args.target_drop,
                                 limit=limit, calib=calib, progress=True)
    print(summarize(results), file=sys.stderr)
    report = {
        "target_drop": args.target_drop,
        "threads": torch.get_num_threads(),
        "seconds": time.time() - t0,
        "results": [r.to_json() for r in results],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
