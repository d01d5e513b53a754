"""Evaluate a codec at a cut: top-1 baseline vs compressed on the same images, exact wire bits.

With ``--checkpoint``: a trained bottleneck (``splitcomp train bottleneck``) on the eval part
of its split; model, cut and codec come from the checkpoint (extra tails: each scored on the
same decoded latent, their models rebuilt from the checkpoint's record).
"""

from __future__ import annotations

import argparse
import json
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
    search_quality,
    summarize,
)
from ..bench.setup import load_eval_setup
from ..data import load_dataset
from ..train import CheckpointError, TrainedOnError, open_checkpoints
from ._common import fail, split_param, standalone
from ._training import write_json
from .train import summary


def parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` strings -> codec params, typed by the codec's declaration later."""
    out: dict[str, Any] = {}
    for item in items:
        k, v = split_param(item)
        out[k] = json.loads(v) if v not in ("", None) and v[0] in "0123456789-[{tf" else v
        if v in ("true", "false"):
            out[k] = v == "true"
    return out


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
                   help="extra codec parameter (repeatable)")
    p.add_argument("--limit", type=int, help="use N images spread evenly over the set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--no-progress", action="store_true")


def run_checkpoint(args: argparse.Namespace) -> int:
    """``--checkpoint``: the trained bottleneck on the eval part of its split."""
    try:
        model, (trained,) = open_checkpoints([args.checkpoint], args.weights)
    except CheckpointError as e:
        return fail(f"--checkpoint: {e}")
    dataset = load_dataset(args.data, model.default_cfg.preprocess())
    bar = tqdm(total=trained.ckpt.split.n_eval, desc="eval", disable=args.no_progress,
               file=sys.stderr)
    try:
        result = trained.evaluate(dataset, args.batch_size, limit=args.limit,
                                  progress=bar.update)
    except (TrainedOnError, CheckpointError) as e:  # CheckpointError: an extra tail's model
        return fail(str(e))
    finally:
        bar.close()
    print(summary(result))
    write_json(result, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        return run_checkpoint(args)
    missing = [f"--{k}" for k in ("model", "split", "codec") if getattr(args, k) is None]
    if missing:
        return fail(f"{', '.join(missing)} required (or --checkpoint)")
    setup = load_eval_setup(args.model, args.weights, args.data, args.split, limit=args.limit)
    cls = codecs.codec_class(args.codec)
    params = parse_params(args.param)
    if args.quality is not None:
        if not cls.quality_param:
            raise SystemExit(f"codec {args.codec} has no quality parameter")
        params[cls.quality_param] = args.quality
    bar = tqdm(total=len(setup.dataset), desc="head", disable=args.no_progress, file=sys.stderr)
    feats = collect_features(setup.head, setup.batches(args.batch_size), bar.update)
    bar.close()
    trials: list[EvalResult] = []
    report = feats
    if args.target_drop is not None:
        n_cal = args.calib or max(100, len(feats) // 10)
        cal_idx, rep_idx = calibration_split(len(feats), n_cal)
        params, trials = search_quality(
            setup.tail, feats.subset(cal_idx), args.codec, args.target_drop, fixed=params
        )
        report = feats.subset(rep_idx)
    bar = tqdm(total=len(report), desc=args.codec, disable=args.no_progress, file=sys.stderr)
    result = evaluate_codec(
        setup.tail, report, codecs.get(args.codec, **params),
        model=setup.model_name, split=args.split, progress=bar.update,
    )
    bar.close()
    if args.target_drop is not None:
        result.extra["target_drop"] = args.target_drop
        result.extra["calibration_images"] = len(feats) - len(report)
        result.extra["calibration_trials"] = [
            {"params": t.params, "drop_pp": t.drop_pp, "bits_per_element": t.bits_per_element}
            for t in trials
        ]
    print(summarize([result]))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return standalone("eval", sys.modules[__name__], argv)
