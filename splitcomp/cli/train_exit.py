"""``splitcomp train exit``: an early exit on the edge, its threshold calibrated for a target drop.

The exit head trains on the train part minus ``--n-calib`` images, the threshold is calibrated
on those held-out train-part images (the lowest one whose exits cost at most ``--target-drop``
points against the server path), and the figures come from the eval part: the share of
inputs answered on the edge, top-1 against the unsplit model, and the mean uplink bytes of
the server path's codec over all inputs (an exit sends nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from .. import codecs
from ..train import CheckpointError, eval_part, reserve_part, split_dataset
from ..train.exit_ckpt import ExitCheckpoint, exit_figures, load_exit, save_exit, score_exit
from ..train.exits import RULES, EdgeExit, ExitConfig, calibrate, train_exit
from ._common import fail
from ._llm_args import parse_params
from ._training import (
    add_model_args,
    add_reserve_arg,
    add_run_args,
    check_targets,
    teacher_setup,
    weights_ref,
    write_json,
)


def add_exit_parser(sub: Any) -> None:
    e = sub.add_parser("exit", help="an early exit on the edge after the cut (distilled, "
                       "threshold calibrated for --target-drop)", description=__doc__)
    add_model_args(e)
    e.add_argument("--target-drop", type=float, required=True, metavar="PP",
                   help="top-1 points the exits may cost (calibrated on the train part)")
    e.add_argument("--rule", default="softmax", choices=sorted(RULES),
                   help="confidence: max softmax probability or negative entropy")
    e.add_argument("--codec", default="int8", help="the server path's codec (default int8)")
    e.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a parameter of --codec (repeatable)")
    e.add_argument("--hidden", type=int, help="width of the exit head (default 2x the cut's)")
    e.add_argument("--blocks", type=int, default=2, help="convolutions of the exit head")
    length = e.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the train part")
    length.add_argument("--minutes", type=float, help="time budget (the schedule is fitted)")
    e.add_argument("--n-train", type=int, default=5000, help="images in the train part")
    e.add_argument("--n-calib", type=int, default=1000,
                   help="train-part images held out of training to calibrate the threshold")
    add_reserve_arg(e)
    e.add_argument("--margin", type=float, default=1.0, metavar="Z",
                   help="calibrate with Z standard deviations of the measured cost in reserve "
                   "(0: the raw measurement, optimistic)")
    e.add_argument("--batch-size", type=int, default=128)
    add_run_args(e)


def exit_summary(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['model']} @ {r['split']}, early exit ({r['rule']} >= {r['threshold']:.4f}), "
        f"server path {r['codec']}: {r['n_eval']} eval images",
        f"  on the edge {100 * r['edge_share']:.1f} % of inputs",
        f"  top-1       {r['top1']:.2f} %  (unsplit {r['top1_baseline']:.2f} %, drop "
        f"{r['drop_pp']:.2f} pp; {r['n_eval_note']})",
        f"  uplink      {r['bytes_per_sample_mean']:.1f} bytes/input on average "
        f"({r['bytes_per_sample_without_exit']:.1f} without the exit, "
        f"{r['bytes_saved_pct']:.1f} % saved)",
        f"  exit head   {r['exit_params']:,} params, {r['exit_mflops']:.2f} MFLOPs "
        f"(head {r['head_mflops']:.2f})",
    ])


def run_exit(args: argparse.Namespace) -> int:
    """Train, calibrate, save, then evaluate the saved exit on the eval part."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available here")
    if args.epochs is None and args.minutes is None:
        return fail("give --epochs or --minutes")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        codec = codecs.get(args.codec, **parse_params(args.codec, args.param))
    except (KeyError, ValueError, TypeError) as e:
        return fail(f"--codec {args.codec}: {e}")
    weights = weights_ref(args.weights)
    try:
        setup = teacher_setup(args.model, weights, args.data, args.split, args.seed)
        train, _, record = split_dataset(setup.dataset, args.n_train, args.seed)
        record.reserved = args.reserve
        train, _ = reserve_part(train, record)
        fit, calib, _ = split_dataset(train, len(train) - args.n_calib, args.seed + 1)
    except (ValueError, KeyError, OSError) as e:
        return fail(str(e).strip("'\""))
    cfg = ExitConfig(hidden=args.hidden, blocks=args.blocks, rule=args.rule, epochs=args.epochs,
                     minutes=args.minutes, batch_size=args.batch_size, seed=args.seed,
                     n_calib=args.n_calib, margin=args.margin, device=args.device)
    images = torch.stack([fit.image_uint8(i) for i in range(len(fit))])
    bar = tqdm(desc="train exit", file=sys.stderr, disable=args.no_progress)

    def progress(d: dict[str, float]) -> None:
        bar.total = int(d["total"]) or None
        bar.n = int(d["step"])
        bar.set_postfix(loss=f"{d['loss']:.3f}", agree=f"{d['agree']:.2f}")

    t0 = time.perf_counter()
    exit_head, hist = train_exit(setup.head, setup.tail, images, fit.preprocess.normalize, cfg,
                                 fit.labels, progress)
    bar.close()
    cal = score_exit(exit_head, cfg.rule, setup.head, setup.tail, calib, codec,
                     device=args.device)
    threshold = calibrate(cal.confidence, cal.exit_right, cal.server_right, args.target_drop,
                          cfg.margin)
    info = {"train_seconds": hist.seconds, "steps": hist.steps,
            "calibration": exit_figures(cal, threshold, exit_head, setup.head,
                                        setup.dataset[0][0].unsqueeze(0))}
    ck = ExitCheckpoint(args.model, weights, args.split, EdgeExit(exit_head, threshold, cfg.rule),
                        cfg, record, args.codec, parse_params(args.codec, args.param), info)
    save_exit(ck, args.out)
    try:
        back = load_exit(args.out)
    except CheckpointError as e:
        return fail(str(e))
    held = eval_part(setup.dataset, back.split)
    bar = tqdm(total=len(held), desc="eval", file=sys.stderr, disable=args.no_progress)
    scores = score_exit(back.exit.head, back.exit.rule, setup.head, setup.tail, held,
                        back.server_codec(), device=args.device, progress=bar.update)
    bar.close()
    result = {"model": args.model, "split": args.split, "codec": args.codec,
              "params": back.params, "rule": back.exit.rule, "n_train": len(fit),
              "n_calib": len(calib),
              **exit_figures(scores, back.exit.threshold, back.exit.head, setup.head,
                             setup.dataset[0][0].unsqueeze(0)),
              "train_seconds": time.perf_counter() - t0, "steps": hist.steps,
              "calibration": {k: info["calibration"][k] for k in (
                  "n_eval", "edge_share", "drop_pp")},
              "checkpoint": str(args.out)}
    targets = check_targets(result, args.target_drop, None)
    back.info = {**info, "figures": result}
    save_exit(back, args.out)
    print(exit_summary(result))
    print("  target      " + targets)
    write_json(result, args.json)
    return 0
