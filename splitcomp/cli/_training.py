"""What the ``train`` commands share: the frozen teacher, weights references, targets, JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bench.setup import EvalSetup, load_eval_setup
from ..train import teacher_model
from . import _common


def weights_ref(weights: str | None) -> str | None:
    """``--weights`` as a checkpoint records it: an existing file as an absolute path."""
    if weights in (None, "random", "hub") or not Path(weights).exists():
        return weights
    return str(Path(weights).resolve())


def teacher_setup(model: str, weights: str | None, data: str, cut: str, seed: int
                  ) -> EvalSetup:
    """The frozen model (random weights seeded by ``seed``), the dataset, head and tail."""
    return load_eval_setup(model, weights, data, cut,
                           model=teacher_model(model, weights, seed))


def write_json(result: dict[str, Any], path: Path | None) -> None:
    """``result`` into ``path`` atomically, missing folders made (nothing without a path)."""
    _common.write_json(result, path)


def check_targets(result: dict[str, Any], drop: float | None, size: float | None) -> str:
    """Compare the figures with the targets given; record them in ``result`` (``target``,
    ``target_met``) and return a line saying whether they were met ('' without targets)."""
    if drop is None and size is None:
        return ""
    met = ((drop is None or result["drop_pp"] <= drop)
           and (size is None or result["bytes_per_sample"] <= size))
    result["target"] = {"drop_pp": drop, "bytes_per_sample": size}
    result["target_met"] = met
    want = " and ".join(w for w in (f"<= {drop:g} pp drop" if drop is not None else "",
                                     f"<= {size:g} B/sample" if size is not None else "") if w)
    return f"{want}: {'met' if met else 'MISSED'}"


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --data, --split: the frozen model a component trains around."""
    p.add_argument("--model", required=True, help="zoo name, e.g. resnet20")
    p.add_argument("--weights", help="weights file, 'hub', or 'random' (seeded by --seed); "
                   "default: the model's offline default weights")
    p.add_argument("--data", required=True, help="'cifar10' or an image folder")
    p.add_argument("--split", required=True, help="cut point: module path or graph node name")


def add_reserve_arg(p: argparse.ArgumentParser) -> None:
    """--reserve N: train-part images kept out of training for a gate trained later."""
    p.add_argument("--reserve", type=int, default=0, metavar="N",
                   help="keep N train-part images out of training (recorded in the "
                   "checkpoint) so that a gate over this option learns on images it never "
                   "saw (default 0)")


def add_run_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--seed, --device, --threads, --out, --json, --no-progress."""
    p.add_argument("--seed", type=int, default=0, help="split, augmentation and init seed")
    if device:
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--json", type=Path, help="write the eval figures here")
    p.add_argument("--no-progress", action="store_true")
