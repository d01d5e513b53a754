"""Choosing bottleneck settings without looking at the eval part.

The train part of ``splitcomp train``'s split (seed 0, 5,000 of the CIFAR-10 test images) is
split again: 4,000 images train, 1,000 validate (seed 1). A run trains on the 4,000 and
prints, as one JSON line, its validation figures: teacher and student top-1, drop, the entropy
model's estimated bytes per sample (the codec adds ~5 B of payload overhead and the 9-B compact
header). ``--epochs`` gives a fixed step count, so a loaded machine slows a run without
changing its result; ``--minutes`` fits the schedule to a budget as ``splitcomp train`` does.

    python benchmarks/train_tuning.py --cut layer3.0 --set beta=3 --set tune_tail=1 --epochs 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from typing import Any

import torch

from splitcomp.data import load_dataset
from splitcomp.partition import split
from splitcomp.train import TrainConfig, split_dataset, train_bottleneck
from splitcomp.zoo import load_model, model_config


def _value(field_type: Any, text: str) -> Any:
    kind = str(field_type)
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--cut", default="layer2")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float)
    length.add_argument("--minutes", type=float)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field (beta, channels, stride, tune_head, tune_tail, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    types = {f.name: f.type for f in fields(TrainConfig)}
    settings: dict[str, Any] = {"epochs": args.epochs, "minutes": args.minutes}
    for item in args.set:
        name, _, text = item.partition("=")
        if name not in types:
            sys.exit(f"--set {item}: no TrainConfig field {name!r}")
        settings[name] = _value(types[name], text)
    cfg = TrainConfig(**settings)

    model = load_model(args.model, None).eval()
    head, tail = split(model, args.cut, (torch.zeros(1, 3, 32, 32),))
    ds = load_dataset("cifar10", model_config(args.model).preprocess())
    train_part, _, _ = split_dataset(ds, 5000, 0)  # the eval part is never read here
    train, val, _ = split_dataset(train_part, 4000, 1)
    images = torch.stack([train.image_uint8(i) for i in range(len(train))])
    t0 = time.perf_counter()
    student, hist = train_bottleneck(head, tail, images, train.preprocess.normalize, cfg,
                                     train.labels)
    seconds = time.perf_counter() - t0
    bn, s_head = student.bottleneck.eval(), student.head.eval()
    s_tail = student.tail if student.tail is not None else tail
    right_t = right_s = n = 0
    bits = 0.0
    with torch.no_grad():
        for x, y in val.batches(250):
            (f,) = head(x)
            (sf,) = s_head(x)
            recon, lik = bn(sf)
            right_t += int((tail(f).argmax(-1) == y).sum())
            right_s += int((s_tail(recon).argmax(-1) == y).sum())
            bits += float(bn.entropy.bits(lik))
            n += len(y)
    print(json.dumps({
        "model": args.model, "cut": args.cut, "note": args.note, "config": cfg.to_json(),
        "n_val": n, "val_top1_teacher": right_t / n, "val_top1": right_s / n,
        "val_drop_pp": 100.0 * (right_t - right_s) / n,
        "val_estimated_bytes_per_sample": bits / n / 8, "steps": hist.steps,
        "train_seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
