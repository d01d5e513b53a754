"""``splitcomp train adapter``: a client adapter for a shifted input distribution (SALT).

The shift (``--shift gaussian_noise:3``: a CIFAR-10-C-style corruption at a severity) is
applied to the train part and the eval part alike; the adapter trains on the shifted train
part (labels, cross entropy through the frozen tail) and is scored on the shifted eval part
against the unadapted model, every path through the same codec: clean (no shift), shifted
before, shifted after adaptation. The server's model is never changed.

``--teacher clean`` is for a client that applies the shift itself (its own JPEG encoder) and
so holds each train image before it too: the adapter then also imitates the frozen model on
the clean twin (``--kd-weight``, ``--temperature``; ``--feature-weight`` at the cut). It is
not honest for a shift the client merely suffers (noise, blur of its camera).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from tqdm import tqdm

from .. import codecs
from ..data.corruptions import corrupted, parse_shift
from ..train import CheckpointError, split_dataset
from ..train.adapters import (
    PLACES,
    TEACHERS,
    AdapterCheckpoint,
    AdapterConfig,
    coded_top1,
    load_adapter,
    save_adapter,
    train_adapter,
)
from ._common import fail
from ._llm_args import parse_params
from ._training import add_model_args, add_run_args, teacher_setup, weights_ref, write_json


def add_adapter_parser(sub: Any) -> None:
    a = sub.add_parser("adapter", help="a client adapter between the frozen head and the codec "
                       "for a shifted input distribution", description=__doc__)
    add_model_args(a)
    a.add_argument("--shift", required=True, metavar="NAME:SEVERITY",
                   help="gaussian_noise, defocus_blur, contrast or jpeg_compression, 1-5")
    a.add_argument("--codec", default="int8", help="the codec every path goes through")
    a.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a parameter of --codec (repeatable)")
    a.add_argument("--place", default="cut", choices=PLACES,
                   help="after the head on the crossing tensor (SALT, default), before it on "
                   "the image, or both")
    a.add_argument("--hidden", type=int, help="width of the adapter at the cut (default: the "
                   "cut's channels)")
    a.add_argument("--input-hidden", type=int, default=32, help="width of the input adapter")
    a.add_argument("--depth", type=int, help="3x3 convolutions per adapter (default 1 at the "
                   "cut, 2 on the input)")
    length = a.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the train part")
    length.add_argument("--minutes", type=float, help="time budget (the schedule is fitted)")
    a.add_argument("--n-train", type=int, default=5000, help="images in the train part")
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--pad", type=int, default=4, help="random-crop padding of the training "
                   "augmentation (0: flips only; JPEG's 8x8 grid stays where it is on the "
                   "device's images)")
    a.add_argument("--teacher", default="none", choices=TEACHERS,
                   help="clean: also distil the frozen model on each train image's clean "
                   "twin (only for a shift the client applies itself, e.g. its own JPEG "
                   "encoder; labels stay the client's own)")
    a.add_argument("--kd-weight", type=float, help="--teacher clean: weight of the KL to the "
                   "clean logits (default 1)")
    a.add_argument("--feature-weight", type=float, help="--teacher clean: weight of the "
                   "relative MSE to the clean features at the cut (default 0)")
    a.add_argument("--temperature", type=float, help="--teacher clean: of the KL (default 4)")
    add_run_args(a)


def _teacher_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The distillation fields of :class:`AdapterConfig`; ValueError for a weight given
    without ``--teacher clean`` or a value out of range."""
    given = {k: getattr(args, k) for k in ("kd_weight", "feature_weight", "temperature")
             if getattr(args, k) is not None}
    if args.teacher == "none" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags}: only with --teacher clean")
    if min(given.get("kd_weight", 0), given.get("feature_weight", 0)) < 0:
        raise ValueError("--kd-weight and --feature-weight must be >= 0")
    if given.get("temperature", 1) <= 0:
        raise ValueError("--temperature must be > 0")
    return {"teacher": args.teacher, **given}


def adapter_summary(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['model']} @ {r['split']}, adapter ({r.get('place', 'cut')}"
        f"{', clean teacher' if r.get('teacher') == 'clean' else ''}) for {r['shift']} "
        f"({r['adapter_params']:,} "
        f"params, {r['train_seconds']:.0f} s): {r['n_eval']} eval images through {r['codec']}",
        f"  clean              {r['top1_clean']:.2f} %",
        f"  shifted, before    {r['top1_shift_before']:.2f} %",
        f"  shifted, adapted   {r['top1_shift_after']:.2f} %  (recovers "
        f"{100 * r['recovered_share']:.0f} % of what the shift costs; {r['n_eval_note']})",
    ])


def run_adapter(args: argparse.Namespace) -> int:
    """Train the adapter on the shifted train part, save it, score the saved one."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available here")
    if args.epochs is None and args.minutes is None:
        return fail("give --epochs or --minutes")
    try:
        name, severity = parse_shift(args.shift)
        teaching = _teacher_settings(args)
        codec = codecs.get(args.codec, **parse_params(args.codec, args.param))
    except (KeyError, ValueError, TypeError) as e:
        return fail(str(e).strip("'\""))
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = weights_ref(args.weights)
    try:
        setup = teacher_setup(args.model, weights, args.data, args.split, args.seed)
        train, held, record = split_dataset(setup.dataset, args.n_train, args.seed)
    except (ValueError, KeyError, OSError) as e:
        return fail(str(e).strip("'\""))
    train_s = corrupted(train, name, severity, args.seed)
    cfg = AdapterConfig(shift=f"{name}:{severity}", place=args.place, hidden=args.hidden,
                        depth=args.depth, input_hidden=args.input_hidden, epochs=args.epochs,
                        minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                        pad=args.pad, seed=args.seed, device=args.device, **teaching)
    images = torch.stack([train_s.image_uint8(i) for i in range(len(train_s))])
    clean = (torch.stack([train.image_uint8(i) for i in range(len(train))])
             if cfg.teacher == "clean" else None)
    bar = tqdm(desc="train adapter", file=sys.stderr, disable=args.no_progress)

    def progress(d: dict[str, float]) -> None:
        bar.total = int(d["total"]) or None
        bar.n = int(d["step"])
        bar.set_postfix(loss=f"{d['loss']:.3f}", acc=f"{d['agree']:.2f}")

    edge, hist = train_adapter(setup.head, setup.tail, images, train_s.labels,
                                  train_s.preprocess.normalize, cfg, progress, clean)
    bar.close()
    ck = AdapterCheckpoint(args.model, weights, args.split, edge.adapter, cfg, record,
                           {"train_seconds": hist.seconds, "steps": hist.steps},
                           edge.input_adapter)
    save_adapter(ck, args.out)
    try:
        back = load_adapter(args.out)
    except CheckpointError as e:
        return fail(str(e))
    held_s = corrupted(held, name, severity, args.seed)
    clean, _ = coded_top1(setup.head, setup.tail, held, codec, device=args.device)
    before, _ = coded_top1(setup.head, setup.tail, held_s, codec, device=args.device)
    after, size = coded_top1(back.edge_model(setup.head), setup.tail, held_s, codec,
                             device=args.device)
    n = len(held)
    result = {"model": args.model, "split": args.split, "shift": cfg.shift,
              "codec": args.codec, "n_train": len(train), "n_eval": n,
              "top1_clean": clean, "top1_shift_before": before, "top1_shift_after": after,
              "recovered_share": (after - before) / (clean - before) if clean > before
              else float("nan"),
              "bytes_per_sample": size,
              "place": cfg.place, "adapter_params": back.params(),
              "teacher": cfg.teacher, **({k: getattr(cfg, k) for k in (
                  "kd_weight", "feature_weight", "temperature")} if cfg.teacher != "none"
                  else {}),
              "train_seconds": hist.seconds, "steps": hist.steps,
              "server_changed": False, "checkpoint": str(args.out),
              "n_eval_note": f"one image of {n} is {100.0 / n:.3f} pp of top-1"}
    back.info = {**back.info, "figures": result}
    save_adapter(back, args.out)
    print(adapter_summary(result))
    write_json(result, args.json)
    return 0
