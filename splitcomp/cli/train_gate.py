"""``splitcomp train gate``: a per-input gate choosing among configurations (NaviSplit).

Options (``--option``, repeatable): ``CODEC[:K=V,K=V]`` (a training-free codec setting on the
cut tensor), ``bottleneck=DIR`` (a trained bottleneck checkpoint at the same cut), ``exit=DIR``
(an early exit: answered on the edge, 0 bytes). Default: four training-free settings from
cheap to safe. The gate trains on the train part minus ``--n-calib`` images, its rule (``tau``)
is calibrated on those, and the figures come from the eval part against every fixed option.
When the trained options were trained with ``--reserve N``, the gate learns and calibrates on
those N images only, which no option saw.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from tqdm import tqdm

from .. import codecs
from ..train import CheckpointError, eval_part, open_checkpoints, split_dataset
from ..train.ckpt_eval import checkpoint_codec
from ..train.exit_ckpt import load_exit
from ..train.gate import (
    EdgeGate,
    Option,
    calibrate_tau,
    gate_images,
    gate_result,
    load_gate,
    save_gate,
    score_options,
    train_gate,
)
from ._common import fail
from ._llm_args import parse_params
from ._training import add_model_args, add_run_args, teacher_setup, weights_ref, write_json

DEFAULT_OPTIONS = ("slicer:quality=0.05", "slicer:quality=0.2", "slicer:quality=0.5", "int8")


def add_gate_parser(sub: Any) -> None:
    g = sub.add_parser("gate", help="a per-input gate choosing among codec settings, trained "
                       "bottlenecks and an exit", description=__doc__)
    add_model_args(g)
    g.add_argument("--option", action="append", default=[], metavar="SPEC",
                   help="CODEC[:K=V,...], bottleneck=DIR or exit=DIR (repeatable; default: "
                   + ", ".join(DEFAULT_OPTIONS) + ")")
    g.add_argument("--epochs", type=int, default=60, help="gate training epochs")
    g.add_argument("--n-train", type=int, default=5000, help="images in the train part")
    g.add_argument("--max-drop", type=float, default=1.0, metavar="PP",
                   help="the gate's top-1 may fall at most this far below the full model's "
                   "(on the calibration images)")
    g.add_argument("--n-calib", type=int, default=1000,
                   help="train-part images held out of the gate's training to calibrate it")
    add_run_args(g, device=False)


def _per_sample(codec: codecs.Codec, feat: torch.Tensor, compact: bool = False,
                contexts: Any = None) -> tuple[torch.Tensor, list[int]]:
    out, sizes = [], []
    for f in feat.split(1):
        data = codec.encode(f, compact=True) if compact else codec.encode(f)
        sizes.append(len(data))
        out.append(codecs.decode(data, contexts=contexts)[0] if contexts else
                   codecs.decode(data)[0])
    return torch.cat(out), sizes


def build_option(spec: str, head: torch.nn.Module, tail: torch.nn.Module, model: str,
                 cut: str, weights: str | None) -> Option:
    """One ``--option`` (ValueError/CheckpointError for a bad one)."""
    kind, eq, path = spec.partition("=")
    if eq and kind == "exit":
        ck = load_exit(path)
        if (ck.model, ck.cut) != (model, cut):
            raise ValueError(f"--option {spec}: an exit for {ck.model} @ {ck.cut}")

        def run_exit(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
            return ck.exit.head(head(x)[0]).argmax(-1), [0] * len(x)
        return Option(spec, run_exit, ck.split, ck.exit.head)
    if eq and kind == "bottleneck":
        _, (trained,) = open_checkpoints([path], weights)
        if (trained.ckpt.model, trained.ckpt.cut) != (model, cut):
            raise ValueError(f"--option {spec}: a checkpoint for {trained.ckpt.model} @ "
                             f"{trained.ckpt.cut}")
        codec, contexts = checkpoint_codec(trained.ckpt)
        edge, server = trained.ckpt.edge_model(), trained.ckpt.server_model(trained.tail)

        def run_bn(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
            y_hat, sizes = _per_sample(codec, edge(x), compact=True, contexts=contexts)
            return server(y_hat).argmax(-1), sizes
        return Option(spec, run_bn, trained.ckpt.split)
    name, _, params = spec.partition(":")
    codec = codecs.get(name, **parse_params(name, [p for p in params.split(",") if p]))

    def run_codec(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        decoded, sizes = _per_sample(codec, head(x)[0])
        return tail(decoded).argmax(-1), sizes
    return Option(spec, run_codec)


def run_gate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = weights_ref(args.weights)
    specs = args.option or list(DEFAULT_OPTIONS)
    if len(specs) < 2:
        return fail("--option: a gate needs at least two options")
    try:
        setup = teacher_setup(args.model, weights, args.data, args.split, args.seed)
        options = [build_option(s, setup.head, setup.tail, args.model, args.split, weights)
                   for s in specs]
        train, _, record = split_dataset(setup.dataset, args.n_train, args.seed)
        images, where = gate_images(train, record, options)
        fit, calib, _ = split_dataset(images, len(images) - args.n_calib, args.seed + 1)
    except (ValueError, KeyError, TypeError, OSError, CheckpointError) as e:
        return fail(str(e).strip("'\""))
    quiet = args.no_progress
    if where.startswith("train part:"):
        print(f"warning: gate images: {where}", file=sys.stderr)

    def scored(ds: Any, what: str) -> Any:
        bar = tqdm(total=len(ds), desc=what, file=sys.stderr, disable=quiet)
        with torch.no_grad():
            s = score_options(options, setup.head, setup.tail, ds, progress=bar.update)
        bar.close()
        return s

    s_fit = scored(fit, "options (train)")
    order = s_fit.cost_order()
    gate, losses = train_gate(s_fit.features, s_fit.signals, s_fit.agree(), args.epochs,
                              seed=args.seed)
    cal = calibrate_tau(gate, scored(calib, "options (calibration)"), args.max_drop)
    exits = [o.exit for o in options if o.exit is not None]
    save_gate(args.out, EdgeGate(gate, exits, order.tolist(), cal.tau, specs), args.model, weights,
              args.split, record, {"gate_loss": losses})
    edge_gate, _ = load_gate(args.out)
    held = eval_part(setup.dataset, record)
    s_eval = scored(held, "options (eval)")
    r = gate_result(s_eval, edge_gate(s_eval.features), cal.tau)
    fixed_top1 = 100.0 * (s_eval.preds == s_eval.labels[:, None]).double().mean(0)
    fixed_bytes = s_eval.sizes.double().mean(0)
    n = len(held)
    result = {
        "model": args.model, "split": args.split, "n_train": len(fit), "n_calib": len(calib),
        "gate_images": where, "n_eval": n, "tau": cal.tau, "top1": r.top1,
        "bytes_per_sample": r.bytes_per_sample,
        "top1_baseline": 100.0 * float((s_eval.teacher == s_eval.labels).double().mean()),
        "max_drop_pp": args.max_drop,
        "best_fixed_setting": specs[r.best_fixed] if r.best_fixed >= 0 else None,
        "best_fixed_top1": r.best_fixed_top1, "best_fixed_bytes_per_sample": r.best_fixed_bytes,
        "saving_pct": 100.0 * r.saving if r.best_fixed >= 0 else None,
        "gate_params": sum(p.numel() for p in gate.parameters()),
        "options": [{"option": s, "top1": float(fixed_top1[j]),
                     "bytes_per_sample": float(fixed_bytes[j]), "share": r.share[j]}
                    for j, s in enumerate(specs)],
        "calibration": {"saving_pct": 100.0 * cal.saving, "top1": cal.top1},
        "gate_loss_first_last": [losses[0], losses[-1]], "checkpoint": str(args.out),
        "n_eval_note": f"one image of {n} is {100.0 / n:.3f} pp of top-1"}
    result["target"] = {"saving_pct": 25.0}
    result["target_met"] = bool(result["saving_pct"] is not None
                                and result["saving_pct"] >= 25.0)
    print(f"{args.model} @ {args.split}, gate over {len(specs)} options, {n} eval images: "
          f"top-1 {r.top1:.2f} % at {r.bytes_per_sample:.1f} B/sample; best fixed "
          f"{result['best_fixed_setting']} {r.best_fixed_top1:.2f} % at "
          f"{r.best_fixed_bytes:.1f} B ({result['saving_pct'] or float('nan'):.1f} % saved; "
          f"target >= 25 %: {'met' if result['target_met'] else 'MISSED'})")
    write_json(result, args.json)
    return 0
