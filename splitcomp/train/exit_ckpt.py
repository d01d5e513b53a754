"""Early-exit checkpoints and their scoring through the real codec.

A checkpoint is the plain-files layout of :mod:`.plain_ckpt`: ``checkpoint.json`` holds the
model, weights, cut, the exit head's shape, its rule and threshold, the server path's codec
(and parameters), the training settings and figures; ``weights.safetensors`` the exit head
(``exit.*``).

:func:`score_exit` runs images through the frozen head, the exit head and, for every image,
the server path (the crossing tensor coded by the codec, decoded, the frozen tail), so the
same pass serves calibration (on train-part images held out of training) and evaluation
(on the eval part). Bytes are exact stream lengths, header included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import codecs
from ..data import ImageFolderDataset
from ..partition.costs import count_flops
from .checkpoint import CheckpointError
from .exits import RULES, EdgeExit, ExitConfig, ExitHead
from .plain_ckpt import load_plain, prefixed, save_plain
from .splits import SplitRecord

FORMAT = "splitcomp-exit"
VERSION = 1


@dataclass
class ExitCheckpoint:
    """A trained exit at a cut of a zoo model, its threshold and the server path's codec."""

    model: str
    weights: str | None
    cut: str
    exit: EdgeExit
    config: ExitConfig
    split: SplitRecord
    codec: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def server_codec(self) -> codecs.Codec:
        return codecs.get(self.codec, **self.params)


def save_exit(ck: ExitCheckpoint, folder: str | Path) -> Path:
    meta = {"model": ck.model, "weights": ck.weights, "cut": ck.cut,
            "exit": ck.exit.head.config(), "rule": ck.exit.rule,
            "threshold": ck.exit.threshold, "codec": ck.codec, "params": ck.params,
            "config": ck.config.to_json(), "info": ck.info}
    tensors = {f"exit.{k}": v for k, v in ck.exit.head.state_dict().items()}
    return save_plain(folder, FORMAT, VERSION, meta, tensors, ck.split)


def load_exit(folder: str | Path) -> ExitCheckpoint:
    """Read an exit checkpoint (:class:`CheckpointError` when it is not one)."""
    meta, tensors, split = load_plain(folder, FORMAT, VERSION)
    try:
        head = ExitHead(**meta["exit"])
        head.load_state_dict(prefixed(tensors, "exit"))
        edge_exit = EdgeExit(head.eval(), float(meta["threshold"]), meta["rule"])
        return ExitCheckpoint(meta["model"], meta["weights"], meta["cut"], edge_exit,
                              ExitConfig(**meta["config"]), split, meta["codec"],
                              dict(meta.get("params") or {}), dict(meta.get("info") or {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: bad exit checkpoint ({e!r})") from None


@dataclass
class Scores:
    """Per image: the exit's confidence and answer, the server path's and the unsplit
    model's answers, the label, and the server path's stream bytes."""

    confidence: torch.Tensor
    exit_pred: torch.Tensor
    server_pred: torch.Tensor
    teacher_pred: torch.Tensor
    labels: torch.Tensor
    stream_bytes: torch.Tensor

    @property
    def exit_right(self) -> torch.Tensor:
        return self.exit_pred == self.labels

    @property
    def server_right(self) -> torch.Tensor:
        return self.server_pred == self.labels


@torch.no_grad()
def score_exit(exit_head: ExitHead, rule: str, head: nn.Module, tail: nn.Module,
               ds: ImageFolderDataset, codec: codecs.Codec, batch_size: int = 250,
               device: str = "cpu", progress: Callable[[int], None] | None = None) -> Scores:
    """Run every image of ``ds`` through head, exit and the server path (:class:`Scores`)."""
    dev = torch.device(device)
    head, tail, exit_head = head.eval().to(dev), tail.eval().to(dev), exit_head.eval().to(dev)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "confidence", "exit_pred", "server_pred", "teacher_pred", "labels", "stream_bytes")}
    for x, y in ds.batches(batch_size):
        (feat,) = head(x.to(dev))
        logits = exit_head(feat)
        decoded, sizes = [], []
        for f in feat.cpu().split(1):
            data = codec.encode(f)
            sizes.append(len(data))
            decoded.append(codecs.decode(data)[0])
        parts["confidence"].append(RULES[rule](logits).cpu())
        parts["exit_pred"].append(logits.argmax(-1).cpu())
        parts["server_pred"].append(tail(torch.cat(decoded).to(dev)).argmax(-1).cpu())
        parts["teacher_pred"].append(tail(feat).argmax(-1).cpu())
        parts["labels"].append(y.cpu())
        parts["stream_bytes"].append(torch.tensor(sizes, dtype=torch.int64))
        if progress is not None:
            progress(len(y))
    return Scores(**{k: torch.cat(v) for k, v in parts.items()})


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    return default if p is None else p.device


def exit_figures(s: Scores, threshold: float, exit_head: ExitHead, head: nn.Module,
                 example: torch.Tensor) -> dict[str, Any]:
    """The JSON figures of an exit at ``threshold`` on the scored images."""
    n = int(s.labels.numel())
    exits = s.confidence >= threshold
    pred = torch.where(exits, s.exit_pred, s.server_pred)
    right = int((pred == s.labels).sum())
    base = int((s.teacher_pred == s.labels).sum())
    sent = s.stream_bytes[~exits]
    example = example.to(_device_of(head, example.device))  # the head may sit on a GPU
    with torch.no_grad():
        (feat,) = head(example)
    feat = feat.to(_device_of(exit_head, feat.device))
    return {
        "n_eval": n, "edge_share": float(exits.float().mean()),
        "top1_baseline": 100.0 * base / n, "top1": 100.0 * right / n,
        "drop_pp": 100.0 * (base - right) / n,
        "top1_server_path": 100.0 * int(s.server_right.sum()) / n,
        "top1_exit_alone": 100.0 * int(s.exit_right.sum()) / n,
        "bytes_per_sample_mean": float(sent.sum()) / n,
        "bytes_per_sample_without_exit": float(s.stream_bytes.float().mean()),
        "bytes_saved_pct": 100.0 * (1 - float(sent.sum()) / max(int(s.stream_bytes.sum()), 1)),
        "threshold": threshold,
        "exit_params": sum(p.numel() for p in exit_head.parameters()),
        "exit_mflops": count_flops(exit_head, feat) / 1e6,
        "head_mflops": count_flops(head, example) / 1e6,
        "n_eval_note": f"one image of {n} is {100.0 / n:.3f} pp of top-1",
    }
