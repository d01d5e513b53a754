"""Train a split component around a frozen model on a seeded train part, report on the eval part.

``splitcomp train bottleneck``: a learned bottleneck (encoder, entropy model, decoder) at a
cut, the head's last blocks fine-tuned; the checkpoint folder gets the weights, the split, the
codec tables and the figures (``docs/training.md``). ``--also``: more models cut at the same
place, each tail served from the same latent by a decoder of its own.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..bench.setup import EvalSetup
from ..train import (
    Checkpoint,
    CheckpointError,
    History,
    Student,
    TailRecord,
    Teacher,
    TrainConfig,
    TrainedOnError,
    crossing_shapes,
    evaluate_checkpoint,
    load_checkpoint,
    open_tails,
    read_meta,
    reserve_part,
    save_checkpoint,
    split_dataset,
    train_bottleneck,
)
from ..train.ckpt_eval import model_tables
from ._common import add_force, check_output, fail, standalone
from ._sweep import SWEEPABLE, sweep
from ._training import add_reserve_arg, check_targets, teacher_setup, weights_ref, write_json
from .train_adapter import add_adapter_parser, run_adapter
from .train_exit import add_exit_parser, run_exit
from .train_gate import add_gate_parser, run_gate

#: most points of each training curve kept in the checkpoint's ``info``
CURVE_POINTS = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="component", required=True, metavar="COMPONENT")
    b = sub.add_parser("bottleneck", help="a learned bottleneck at a cut (encoder, entropy "
                       "model, decoder) with the head's last blocks fine-tuned",
                       description=__doc__)
    b.add_argument("--model", required=True, help="zoo name, e.g. resnet20")
    b.add_argument("--weights", help="weights file, 'hub', or 'random' (seeded by --seed); "
                   "default: the model's offline default weights")
    b.add_argument("--data", required=True, help="'cifar10' or an image folder")
    b.add_argument("--split", required=True, help="cut point: module path or graph node name")
    b.add_argument("--also", action="append", default=[], metavar="MODEL[:WEIGHTS]",
                   help="another zoo model cut at --split, whose tail is served from the same "
                   "latent by a decoder of its own (repeatable; default: its offline weights)")
    b.add_argument("--beta", type=float, help="rate weight (loss per bit per element of the "
                   "cut tensor); required unless --resume")
    b.add_argument("--channels", type=int, default=16, help="latent channels")
    b.add_argument("--stride", type=int, default=2, choices=(1, 2), help="latent downsampling")
    b.add_argument("--tune-head", type=int, default=1, metavar="N",
                   help="the head's last N blocks fine-tuned on the edge (0: frozen)")
    b.add_argument("--tune-tail", type=int, default=0, metavar="N",
                   help="the tail's first N blocks fine-tuned in stage 2, a copy the server "
                   "runs for this checkpoint (0: the original tail, frozen)")
    b.add_argument("--tail-lr", type=float, default=1e-4, help="learning rate of the tail copy")
    b.add_argument("--hidden", type=int, help="width of the encoder and decoder convolutions "
                   "(default: the cut tensor's channels)")
    b.add_argument("--mix-alpha", type=float, default=1.0, help="mixup/CutMix strength of the "
                   "training views (0: crops and flips only)")
    b.add_argument("--temperature", type=float, default=4.0, help="KD temperature")
    b.add_argument("--symbol-error-rate", type=float, default=0.0, metavar="P",
                   help="BER-aware training: each latent row replaced by the channel medians "
                   "with probability P, as a concealed slice of a `resilient` stream decodes "
                   "(default 0: off)")
    length = b.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the train part")
    length.add_argument("--minutes", type=float, help="time budget (the schedule is fitted)")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--lr", type=float, default=2e-3)
    b.add_argument("--n-train", type=int, default=5000, help="images in the train part; the "
                   "rest of --data is the eval part")
    add_reserve_arg(b)
    b.add_argument("--seed", type=int, default=0, help="split, augmentation and init seed")
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    b.add_argument("--json", type=Path, help="write the eval figures here")
    b.add_argument("--target-drop", type=float, metavar="PP", help="flag the result against "
                   "this top-1 drop (pp) in the output and the JSON")
    b.add_argument("--target-bytes", type=float, metavar="B", help="flag the result against "
                   "this many bytes per sample on the wire")
    b.add_argument("--resume", action="store_true", help="continue the checkpoint in --out "
                   "(its settings and split; the training options here are not used)")
    b.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                   help="train the family of every combination of the swept values (fields: "
                   f"{', '.join(SWEEPABLE)}; repeatable) into --out/<name>, --minutes split "
                   "over the runs; --json then gets every run's figures and the Pareto front")
    b.add_argument("--checkpoint-minutes", type=float, default=5.0,
                   help="save the checkpoint this often while training")
    b.add_argument("--no-progress", action="store_true")
    add_exit_parser(sub)
    add_adapter_parser(sub)
    add_gate_parser(sub)
    for component in sub.choices.values():
        add_force(component)


def also_records(args: argparse.Namespace) -> list[TailRecord]:
    """``--also MODEL[:WEIGHTS]`` as the checkpoint records them (ValueError: a model twice)."""
    out = []
    for item in args.also:
        name, _, weights = item.partition(":")
        out.append(TailRecord(name, weights_ref(weights or None), args.split))
    names = [args.model, *(r.model for r in out)]
    if len(set(names)) != len(names):
        raise ValueError(f"--also: each model once, and not --model ({', '.join(names)})")
    return out


def summary(r: dict[str, Any]) -> str:
    """A few lines of the figures of :func:`~splitcomp.train.evaluate_checkpoint`."""
    return "\n".join([
        f"{r['model']} @ {r['split']}, bottleneck C={r['channels']} stride {r['stride']} "
        f"beta {r['beta']:g}: {r['n_eval']} eval images (trained on {r['n_train']})",
        f"  top-1      {r['top1']:.2f} %  (teacher {r['top1_baseline']:.2f} %, drop "
        f"{r['drop_pp']:.2f} pp; {r['n_eval_note']})",
        f"  wire       {r['bytes_per_sample']:.1f} bytes/sample, {r['bits_per_element']:.4f} "
        f"bits/element (model estimate {r['estimated_bytes_per_sample']:.1f} bytes)",
        f"  encoder    {r['encoder_params']:,} params, {r['encoder_mflops']:.2f} MFLOPs "
        f"(head {r['head_mflops']:.2f})",
        *(f"  tail {name}: top-1 {t['top1']:.2f} % (teacher {t['top1_baseline']:.2f} %, "
          f"drop {t['drop_pp']:.2f} pp), the same bytes"
          for name, t in r.get("tails", {}).items() if name != r["model"]),
    ])


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _curves(hist: History, before: dict[str, Any]) -> dict[str, list]:
    """The logged curves of this run appended to those of the runs it resumed, thinned."""
    new = {"step": hist.step, "loss": hist.loss, "bits_per_sample": hist.bits_per_sample,
           "agree": [_finite(a) for a in hist.agree]}
    out = {k: list(before.get(k, [])) + list(v) for k, v in new.items()}
    keep = max(1, math.ceil(len(out["step"]) / CURVE_POINTS))
    return {k: v[::-1][::keep][::-1] for k, v in out.items()}


def _bottleneck_command(args: argparse.Namespace) -> int:
    """One run, or with ``--sweep`` the family of runs (:mod:`._sweep`)."""
    if args.sweep:
        return sweep(args, _bottleneck, write_json)
    return _bottleneck(args)


def _bottleneck(args: argparse.Namespace) -> int:
    """Train (or resume) one bottleneck into ``args.out``, evaluate and report it."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        try:
            meta = read_meta(args.out)
            weights, seed = meta["weights"], int(meta["config"]["seed"])
        except (CheckpointError, KeyError) as e:
            return fail(f"--resume: {e}")
        if (meta["model"], meta["cut"]) != (args.model, args.split):
            return fail(f"--resume: {args.out} holds {meta['model']} @ {meta['cut']}")
    else:
        if args.beta is None:
            return fail("--beta is required (unless --resume)")
        if args.epochs is None and args.minutes is None:
            return fail("give --epochs or --minutes")
        weights, seed = weights_ref(args.weights), args.seed
    setup = teacher_setup(args.model, weights, args.data, args.split, seed)
    prior: dict[str, Any] = {}
    student: Student | None = None
    start, total = 0, None
    try:
        if args.resume:
            old = load_checkpoint(args.out, setup.head, setup.tail)
            cfg, record = replace(old.config, device=args.device), old.split
            train, _, again = split_dataset(setup.dataset, record.n_train, record.seed)
            if again.eval_digest != record.eval_digest:
                return fail(f"--resume: --data is not what {args.out} was split from")
            train, _ = reserve_part(train, record)
            student, start, total = old.student, old.step, old.total_steps or None
            prior, records = old.info, old.tails
        else:
            cfg = TrainConfig(channels=args.channels, stride=args.stride, beta=args.beta,
                              hidden=args.hidden, tune_head=args.tune_head,
                              tune_tail=args.tune_tail, tail_lr=args.tail_lr,
                              epochs=args.epochs,
                              minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                              temperature=args.temperature, mix_alpha=args.mix_alpha,
                              seed=args.seed, device=args.device,
                              symbol_error_rate=args.symbol_error_rate)
            train, _, record = split_dataset(setup.dataset, args.n_train, args.seed)
            record.reserved = args.reserve
            train, _ = reserve_part(train, record)
            records = also_records(args)
        extra = open_tails(records, seed, setup.model)
        crossing_shapes([Teacher(args.model, setup.head, setup.tail), *extra],
                        setup.dataset[0][0].unsqueeze(0))
    except (CheckpointError, ValueError, KeyError, OSError) as e:
        return fail(str(e).strip("'\""))
    seconds_before = float(prior.get("train_seconds", 0.0))
    t0 = time.perf_counter()

    def checkpoint(s: Student, step: int, total_steps: int, info: dict[str, Any]) -> None:
        tables = model_tables(s.bottleneck.entropy).to_bytes()
        save_checkpoint(Checkpoint(args.model, weights, args.split, s, cfg, record, step,
                                   total_steps, tables, info, records), args.out)

    def partial(s: Student, step: int, total_steps: int) -> None:
        checkpoint(s, step, total_steps, {
            "partial": True, "train_seconds": seconds_before + time.perf_counter() - t0,
            "curves": prior.get("curves", {})})

    bar = tqdm(total=total, initial=start, desc="train", file=sys.stderr,
               disable=args.no_progress)

    def show(d: dict[str, float]) -> None:
        if d["total"] and bar.total != d["total"]:
            bar.total = int(d["total"])
        bar.update(int(d["step"]) - bar.n)
        bar.set_postfix(stage=int(d["stage"]), loss=f"{d['loss']:.3f}",
                        bits=f"{d['bits']:.0f}", agree=f"{d['agree']:.2f}", refresh=False)

    images = torch.stack([train.image_uint8(i) for i in range(len(train))])
    student, hist = train_bottleneck(
        setup.head, setup.tail, images, train.preprocess.normalize, cfg, labels=train.labels,
        student=student, progress=show, start_step=start, total_steps=total,
        on_checkpoint=partial, checkpoint_every=args.checkpoint_minutes * 60, extra=extra)
    bar.close()
    step = start + hist.steps
    info = {"train_seconds": seconds_before + hist.seconds, "steps": step,
            "device": cfg.device, "threads": torch.get_num_threads(),
            "curves": _curves(hist, prior.get("curves", {}))}
    checkpoint(student, step, max(total or 0, step), info)
    return _evaluate_saved(args, setup, extra, info)


def _evaluate_saved(args: argparse.Namespace, setup: EvalSetup, extra: list[Teacher],
                    info: dict[str, Any]) -> int:
    """Evaluate the checkpoint as saved (read back from disk), record and print the figures."""
    ckpt = load_checkpoint(args.out, setup.head, setup.tail)
    bar = tqdm(total=ckpt.split.n_eval, desc="eval", file=sys.stderr, disable=args.no_progress)
    result = evaluate_checkpoint(ckpt, setup.head, setup.tail, setup.dataset, args.batch_size,
                                 device=args.device, progress=bar.update, extra=extra)
    bar.close()
    result["checkpoint"] = str(args.out)
    targets = check_targets(result, args.target_drop, args.target_bytes)
    ckpt.info = {**info, "figures": result}
    save_checkpoint(ckpt, args.out)
    print(summary(result))
    if targets:
        print("  target     " + targets)
    write_json(result, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    check_output(args.json, args.force)  # before any training
    try:
        return {"bottleneck": _bottleneck_command, "exit": run_exit,
                "adapter": run_adapter, "gate": run_gate}[args.component](args)
    except TrainedOnError as e:
        return fail(str(e))


def main(argv: list[str] | None = None) -> int:
    return standalone("train", sys.modules[__name__], argv)
