"""Evaluate a codec at a cut: top-1 baseline vs compressed on the same images, exact wire bits.

With ``--checkpoint``: a trained bottleneck (``splitcomp train bottleneck``) on the eval part
of its split; model, cut and codec come from the checkpoint (extra tails: each scored on the
same decoded latent, their models rebuilt from the checkpoint's record).

With ``--ber``: each sample's stream crosses a link flipping bits at that rate (seeded by
``--ber-seed``); a stream the decoder rejects is a lost request, scored wrong. ``--resilient``
sends the codec inside the ``resilient`` codec (``--slices`` checked slices, a failed one
concealed); the JSON adds ``ber``, ``requests_lost``, ``concealed_slices``, ``top1_clean``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import codecs
from ..bench.codec_eval import (
    EvalResult,
    calibration_split,
    collect_features,
    evaluate_codec,
    evaluate_over_channel,
    search_quality,
    summarize,
)
from ..bench.setup import EvalSetup
from ..partition import split as split_model
from ..runtime.device import on_device
from ..train import CheckpointError, TrainedOnError, open_checkpoints
from ..train.ckpt_eval import evaluate_checkpoint
from ..train.ckpt_eval import evaluate_over_channel as checkpoint_over_channel
from ._checks import (
    build_codec,
    check_splits,
    load_checked_model,
    open_data,
    parse_params,
    zoo_config,
)
from ._common import UsageError, add_force, at_least, check_output, fail, standalone, write_json
from ._device import add_device, checked_device
from .train import summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo name, e.g. resnet20, mobilenet_v2 (required unless "
                   "--checkpoint)")
    p.add_argument("--weights", help="weights file, 'hub', or 'random' (default: the "
                   "model's offline default weights)")
    p.add_argument("--data", required=True, help="image folder (CIFAR class folders, ImageNet "
                   "<synset>_<name>.JPEG files) or 'foolbox-imagenet' / 'foolbox-cifar10'")
    p.add_argument("--split", help="cut point: module path or graph node name (required "
                   "unless --checkpoint)")
    p.add_argument("--codec", choices=codecs.available(), help="(required unless --checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="a trained bottleneck's folder: evaluate it "
                   "on the eval part of its split (--limit: that many of those images)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--quality", type=float, help="value of the codec's quality parameter")
    q.add_argument("--target-drop", type=float, help="choose the setting on a calibration "
                   "subset so the top-1 drop is at most this many points, report on the rest")
    p.add_argument("--calib", type=int, default=0, help="calibration images (default 10%%, "
                   "at least 100)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="codec parameter, typed by the codec's declaration (repeatable; "
                   "splitcomp codecs -v lists them)")
    p.add_argument("--limit", type=int, help="use N images spread evenly over the set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", type=Path, help="write the figures here")
    add_force(p)
    p.add_argument("--ber", type=float, help="send every stream over a link flipping each bit "
                   "with this probability (a rejected stream is a lost request)")
    p.add_argument("--ber-seed", type=int, default=0, help="seed of the bit errors")
    p.add_argument("--resilient", action="store_true", help="wrap the codec in the "
                   "`resilient` codec: checked slices, a corrupt one concealed")
    p.add_argument("--slices", type=int, default=8, help="slices of --resilient")
    p.add_argument("--slice-axis", type=int, default=2, help="axis --resilient cuts (2: rows "
                   "of a feature map, 1: channels)")
    add_device(p, "the model's head and tail (codecs: on the CPU either way)")
    p.add_argument("--no-progress", action="store_true")


def _channel_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the bit-error options, if anything."""
    if args.ber is not None and not 0.0 <= args.ber < 1.0:
        return f"--ber must be in [0, 1), got {args.ber:g}"
    if not 1 <= args.slices <= 256:
        return f"--slices must be in 1 .. 256, got {args.slices}"
    return None


def channel_summary(r: dict[str, Any]) -> str:
    """One line of the bit-error figures of a result."""
    return (f"  BER {r['ber']:g}: top-1 {r['top1']:.2f} % (without errors "
            f"{r['top1_clean']:.2f} %, {r['ber_drop_pp']:+.2f} pp lost to them), requests lost "
            f"{r['requests_lost']}, slices concealed {r['concealed_slices']}, "
            f"{r['bytes_per_sample']:.1f} bytes/sample")


def run_checkpoint(args: argparse.Namespace) -> int:
    """``--checkpoint``: the trained bottleneck on the eval part of its split (``--ber``: its
    primary tail over a link with bit errors)."""
    try:
        model, (trained,) = open_checkpoints([args.checkpoint], args.weights)
    except CheckpointError as e:
        return fail(f"--checkpoint: {e}")
    dataset = open_data(args.data, model.default_cfg)
    bar = tqdm(total=trained.ckpt.split.n_eval, desc="eval", disable=args.no_progress,
               file=sys.stderr)
    try:
        if args.ber is not None or args.resilient:
            result = checkpoint_over_channel(
                trained.ckpt, trained.head, trained.tail, dataset, args.ber or 0.0,
                slices=args.slices if args.resilient else None, slice_axis=args.slice_axis,
                seed=args.ber_seed, batch_size=args.batch_size, limit=args.limit,
                device=args.device, progress=bar.update)
            result["checkpoint"] = str(args.checkpoint)
            bar.close()
            print(f"{result['model']} @ {result['split']}, {result['codec']}: "
                  f"{result['n_eval']} eval images (teacher {result['top1_baseline']:.2f} %)")
            print(channel_summary(result))
            write_json(result, args.json)
            return 0
        result = evaluate_checkpoint(trained.ckpt, trained.head, trained.tail, dataset,
                                     args.batch_size, limit=args.limit, device=args.device,
                                     progress=bar.update)
        result["checkpoint"] = str(trained.folder)
    except (TrainedOnError, CheckpointError) as e:  # CheckpointError: an extra tail's model
        return fail(str(e))
    finally:
        bar.close()
    print(summary(result))
    write_json(result, args.json)
    return 0


def _calibration_size(args: argparse.Namespace, n: int) -> int:
    """Images ``--target-drop`` calibrates on, out of ``n`` (UsageError: none left over)."""
    n_cal = args.calib or max(100, n // 10)
    if n_cal >= n:
        where = f"--limit {args.limit}" if args.limit else f"--data {args.data}"
        raise UsageError(f"--target-drop calibrates on {n_cal} images and reports on the others, "
                         f"but {where} gives {n}: use more images or a smaller --calib")
    return n_cal


def _make_codec(args: argparse.Namespace, params: dict[str, Any]) -> codecs.Codec:
    """The codec of ``--codec`` (inside ``resilient`` with ``--resilient``)."""
    try:
        codec = codecs.get(args.codec, **params)
        if args.resilient:
            codec = codecs.get("resilient", inner=args.codec, slices=args.slices,
                               slice_axis=args.slice_axis, **params)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"--codec {args.codec}: {str(e).strip(chr(39))}") from None
    return codec


def _setup(args: argparse.Namespace) -> EvalSetup:
    """Model, cut and data, each checked before the next (and before any image is read)."""
    cfg = zoo_config(args.model)
    model = load_checked_model(args.model, args.weights)
    check_splits(args.model, [args.split], model)
    dataset = open_data(args.data, cfg, args.limit)
    if args.target_drop is not None:
        _calibration_size(args, len(dataset))
    dataset.preload()
    head, tail = split_model(model, args.split, (dataset[0][0].unsqueeze(0),))
    # off the CPU: batches go through pinned memory, features and outputs come back
    return EvalSetup(args.model, model, dataset, on_device(head, args.device),
                     on_device(tail, args.device))


def _target_line(result: EvalResult, target: float, trials: list[EvalResult]) -> str:
    """Record whether ``--target-drop`` was met (``target_met``) and say so in one line."""
    met = result.drop_pp <= target
    calibrated = any(t.drop_pp <= target for t in trials) or not trials
    result.extra["target_met"] = met
    result.extra["calibration_met"] = calibrated
    line = (f"target <= {target:g} pp drop: {'met' if met else 'MISSED'} "
            f"({result.drop_pp:.2f} pp on the {result.n_images} report images)")
    if not calibrated:
        line += "; even the highest-rate setting missed it on the calibration images"
    elif not met:
        line += "; the calibration images met it (a larger --calib makes the choice surer)"
    return line


def run(args: argparse.Namespace) -> int:
    problem = _channel_error(args)
    if problem:
        return fail(problem)
    args.device = checked_device(args.device)
    at_least("--limit", args.limit)
    at_least("--batch-size", args.batch_size)
    at_least("--calib", args.calib, 0)
    check_output(args.json, args.force)
    if args.checkpoint is not None:
        return run_checkpoint(args)
    missing = [f"--{k}" for k in ("model", "split", "codec") if getattr(args, k) is None]
    if missing:
        return fail(f"{', '.join(missing)} required (or --checkpoint)")
    params = parse_params(args.codec, args.param)
    build_codec(args.codec, params, args.quality)  # a value out of range: now, not at the end
    if args.quality is not None:
        params[codecs.codec_class(args.codec).quality_param] = args.quality
    _make_codec(args, params)
    setup = _setup(args)
    bar = tqdm(total=len(setup.dataset), desc="head", disable=args.no_progress, file=sys.stderr)
    feats = collect_features(setup.head, setup.batches(args.batch_size), bar.update)
    bar.close()
    trials: list[EvalResult] = []
    report = feats
    if args.target_drop is not None:
        n_cal = _calibration_size(args, len(feats))
        cal_idx, rep_idx = calibration_split(len(feats), n_cal)
        params, trials = search_quality(
            setup.tail, feats.subset(cal_idx), args.codec, args.target_drop, fixed=params
        )
        report = feats.subset(rep_idx)
    codec = _make_codec(args, params)
    bar = tqdm(total=len(report), desc=codec.name, disable=args.no_progress, file=sys.stderr)
    if args.ber is not None or args.resilient:
        result = evaluate_over_channel(setup.tail, report, codec, args.ber or 0.0,
                                       seed=args.ber_seed, model=setup.model_name,
                                       split=args.split, progress=bar.update)
    else:
        result = evaluate_codec(setup.tail, report, codec, model=setup.model_name,
                                split=args.split, progress=bar.update)
    bar.close()
    if args.target_drop is not None:
        result.extra["target_drop"] = args.target_drop
        result.extra["calibration_images"] = len(feats) - len(report)
        result.extra["calibration_trials"] = [
            {"params": t.params, "drop_pp": t.drop_pp, "bits_per_element": t.bits_per_element}
            for t in trials
        ]
    target = _target_line(result, args.target_drop, trials) \
        if args.target_drop is not None else ""
    print(summarize([result]))
    if "ber" in result.extra:
        print(channel_summary(result.to_json()))
    if target:
        print(target)
    write_json(result.to_json(), args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return standalone("eval", sys.modules[__name__], argv)
