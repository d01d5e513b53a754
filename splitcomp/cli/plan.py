"""Plan a deployment: which cut, codec and setting (or none) for this network and device.

``splitcomp plan --model resnet20 --data cifar10 --bandwidth 10Mbit --rtt 20ms --max-drop 0.5
--objective latency --edge-profile phone`` profiles cuts, codecs and input compression on a
calibration subset, costs each option on the channel (docs/planner.md) and prints the Pareto
table and the chosen plan; ``--plan-out`` writes it for ``splitcomp serve``.
``--checkpoint CKPT_DIR`` (repeatable) adds trained bottlenecks of the model as candidates at
their cuts; the calibration images are then drawn from outside their train parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data import ImageFolderDataset, load_dataset
from ..partition.costs import FLOPS_NOTE
from ..plan.channel import Channel
from ..plan.devices import available_devices, get_device
from ..plan.input_codec import INPUT_FORMATS
from ..plan.planfile import plan_from_row, save_plan
from ..plan.planner import OBJECTIVES, PlanRow, build_rows, choose, format_table, shown_rows
from ..plan.profile import DEFAULT_CODECS, ModelProfile, Profiler
from ..train import CheckpointError, Trained, TrainedOnError, check_untrained, untrained_part
from ._checks import (
    check_splits,
    codec_name,
    load_checked_model,
    open_data,
    require_file,
    with_unit,
    zoo_config,
)
from ._common import (
    UsageError,
    add_force,
    at_least,
    check_output,
    fail,
    model_checkpoints,
    standalone,
    write_atomic,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name, e.g. resnet20, mobilenet_v2")
    p.add_argument("--weights", help="weights file or 'random' (default: offline defaults)")
    p.add_argument("--data", help="calibration images (as for `splitcomp eval`); several "
                   "sources may be joined with commas")
    p.add_argument("--calib", type=int, default=200, help="calibration images (spread evenly)")
    p.add_argument("--bandwidth", default="10Mbit", help="uplink rate with its unit, e.g. "
                   "10Mbit, 800kbit (a bare number is refused)")
    p.add_argument("--downlink", default=None, help="downlink rate (default: the uplink's)")
    p.add_argument("--rtt", default="20ms", help="round-trip time with its unit, e.g. 20ms, "
                   "0.1s (a bare number is refused)")
    p.add_argument("--loss", type=float, default=0.0, help="packet loss probability")
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate")
    p.add_argument("--trace", type=Path, help="bandwidth trace: 'time_s bandwidth' lines")
    p.add_argument("--max-drop", type=float, default=0.5, help="top-1 budget, in points")
    p.add_argument("--objective", choices=tuple(OBJECTIVES), default="latency")
    p.add_argument("--max-latency-ms", type=float, help="deadline the chosen plan must meet")
    p.add_argument("--offload-only", action="store_true",
                   help="never choose running the whole model on the edge")
    p.add_argument("--edge-profile", default="phone", choices=available_devices())
    p.add_argument("--edge-slowdown", type=float, default=1.0,
                   help="extra factor on the profile's slowdown")
    p.add_argument("--queue-ms", type=float, default=2.0,
                   help="server batching wait of a lone request (serve --max-wait-ms)")
    p.add_argument("--splits", help="comma-separated cuts to profile (default: --max-splits "
                   "spread over the model)")
    p.add_argument("--max-splits", type=int, default=4)
    p.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                   help="comma-separated feature codecs")
    p.add_argument("--input-codecs", default=",".join(INPUT_FORMATS),
                   help="comma-separated input image formats ('' for none)")
    p.add_argument("--checkpoint", action="append", default=[], type=Path, metavar="CKPT_DIR",
                   help="a trained bottleneck of --model (repeatable): one more candidate at "
                   "its cut; calibration images then come from the eval part of its split")
    p.add_argument("--repeats", type=int, default=10, help="timing repeats (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--profile-in", type=Path, help="reuse a profile (from --profile-out)")
    p.add_argument("--profile-out", type=Path, help="save the measured profile")
    p.add_argument("--all", action="store_true", help="print every row, not just the front")
    p.add_argument("--json", type=Path, help="write profile, rows and choices here")
    p.add_argument("--plan-out", type=Path, help="write the chosen plan here")
    add_force(p)


def _calibration(args: argparse.Namespace, preprocess, trained: list[Trained]
                 ) -> ImageFolderDataset:
    """``--calib`` images shared as evenly as the sources allow (a small one gives all it has),
    none from a checkpoint's train part (its own dataset: the eval part of its split)."""
    parts = []
    records = [t.ckpt.split for t in trained]
    sources = [s for s in args.data.split(",") if s]
    left = args.calib
    for k, src in enumerate(sources):
        ds, _ = untrained_part(load_dataset(src, preprocess), records)
        want = min(len(ds), left // (len(sources) - k))
        parts.append(ds.subset(want))
        left -= len(parts[-1])
    calib = ImageFolderDataset.concat(parts).preload()
    check_untrained(calib, records)
    return calib


def measure(args: argparse.Namespace, log=None) -> ModelProfile:
    """Profile the model as the arguments say (or load a saved profile)."""
    if args.profile_in:
        if args.checkpoint:
            raise UsageError("--checkpoint is measured: not with --profile-in (its profile "
                             "keeps the checkpoints it was measured with)")
        try:
            return ModelProfile.from_json(json.loads(args.profile_in.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--profile-in {args.profile_in}: not a profile written by "
                             f"--profile-out ({type(e).__name__}: {e})") from None
    if not args.data:
        raise UsageError("--data is needed (or --profile-in)")
    cfg = zoo_config(args.model)
    at_least("--calib", args.calib)
    at_least("--repeats", args.repeats)
    at_least("--max-splits", args.max_splits)
    names = [codec_name(c, "--codecs") for c in args.codecs.split(",") if c]
    for f in (f for f in args.input_codecs.split(",") if f):
        if f not in INPUT_FORMATS:
            raise UsageError(f"--input-codecs {f}: not one of {', '.join(INPUT_FORMATS)}")
    sources = [s for s in args.data.split(",") if s]
    if not sources:
        raise UsageError("--data names no source")
    for src in sources:
        open_data(src, cfg)
    splits = [s for s in args.splits.split(",") if s] if args.splits else None
    model, trained = model_checkpoints(args.model, args.checkpoint, args.weights)
    model = load_checked_model(args.model, args.weights) if model is None else model
    check_splits(args.model, splits or [], model, "--splits")
    calib = _calibration(args, cfg.preprocess(), trained)
    images = torch.stack([calib.image_uint8(i) for i in range(len(calib))])
    labels = calib.labels
    prof = Profiler(model, args.model, images, labels, cfg.preprocess(), codec_names=names,
                    input_formats=[f for f in args.input_codecs.split(",") if f],
                    max_drop=args.max_drop, repeats=args.repeats, log=log)
    out = prof.profile(splits, args.max_splits, trained, calib)
    out.data = args.data
    return out


def _channel(args: argparse.Namespace) -> Channel:
    """The channel of the flags; rates and times must carry their unit."""
    with_unit("--bandwidth", args.bandwidth, "Mbit")
    with_unit("--downlink", args.downlink, "Mbit")
    with_unit("--rtt", args.rtt, "ms")
    require_file(args.trace, "--trace")
    for flag, p in (("--loss", args.loss), ("--ber", args.ber)):
        if not 0.0 <= p < 1.0:
            raise UsageError(f"{flag} is a probability in [0, 1), got {p:g}")
    try:
        return Channel.parse(args.bandwidth, args.rtt, loss=args.loss, ber=args.ber,
                             downlink=args.downlink, trace=args.trace)
    except ValueError as e:
        raise UsageError(f"channel: {e}") from None


def _describe(r: PlanRow) -> str:
    return (f"{r.name} {r.kind} {r.split} {r.codec} {r.setting} ({r.end_to_end_ms:.1f} ms end "
            f"to end, {r.server_ms:.2f} ms server, {r.uplink_bytes:,} B up, "
            f"{1e3 * r.energy_j:.1f} mJ)")


def run(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    channel = _channel(args)
    for path, flag in ((args.json, "--json"), (args.plan_out, "--plan-out"),
                       (args.profile_out, "--profile-out")):
        check_output(path, args.force, flag)
    require_file(args.profile_in, "--profile-in")
    device = get_device(args.edge_profile, args.edge_slowdown)
    try:
        prof = measure(args, log)
    except (CheckpointError, TrainedOnError) as e:
        return fail(f"--checkpoint: {e}")
    write_json(prof.to_json(), args.profile_out)
    rows = build_rows(prof, channel, device, max_drop=args.max_drop, queue_ms=args.queue_ms,
                      deployment=args.model)
    exclude = ("device",) if args.offload_only else ()
    winners = {o: choose(rows, o, exclude=exclude, max_latency_ms=args.max_latency_ms)
               for o in OBJECTIVES}
    offload = {o: choose(rows, o, exclude=("device",), max_latency_ms=args.max_latency_ms)
               for o in OBJECTIVES}
    chosen = winners[args.objective]
    total = prof.cuts[0].total_flops if prof.cuts else 0
    print(f"{prof.model}: channel {channel.describe()}; edge {device.name} "
          f"({device.slowdown:g}x this machine); accuracy budget {args.max_drop} pp on "
          f"{prof.n_calib} images (top-1 {prof.top1:.2f}); {len(rows)} plans; whole model "
          f"{total / 1e6:,.1f} MFLOPs per sample (FLOPs: a multiply-add counts 2)")
    if prof.trained:
        print(f"{len(prof.trained)} trained checkpoint(s): the calibration images are outside "
              "their train parts (bytes: compact bottleneck streams)")
    print(format_table(rows if args.all else shown_rows(rows, [*winners.values(),
                                                               *offload.values()])))
    print("(Pareto front over end-to-end, server, uplink, energy and drop, plus the extremes, "
          "the best input compression and every trained checkpoint; * = over the accuracy "
          "budget)\n")
    for o, r in winners.items():
        mark = "  <- chosen" if o == args.objective else ""
        print(f"best for {o:8s}: {_describe(r)}{mark}")
        if r.kind == "device":
            print(f"  offloading: {_describe(offload[o])}")
    if args.json:
        out = {"model": prof.model, "channel": channel.to_json(), "device": device.to_json(),
               "max_drop": args.max_drop, "queue_ms": args.queue_ms,
               "profile": prof.to_json(), "rows": [r.to_json() for r in rows],
               "best": {o: r.name for o, r in winners.items()},
               "best_offload": {o: r.name for o, r in offload.items()},
               "objective": args.objective, "flops_note": FLOPS_NOTE}
        write_json(out, args.json)
    if args.plan_out:
        plan = plan_from_row(chosen, model=args.model, channel=channel,
                             device=device.to_json(), objective=args.objective,
                             max_drop=args.max_drop, weights=args.weights,
                             alternatives=[r for r in rows if r.pareto])
        write_atomic(args.plan_out, lambda tmp: save_plan(plan, tmp))
        print(f"plan written to {args.plan_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m splitcomp.cli.plan`` (same as ``splitcomp plan``)."""
    return standalone("plan", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
