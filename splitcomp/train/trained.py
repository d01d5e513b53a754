"""Checkpoints opened beside the frozen model they were trained around, and the images they may
be reported on.

The teacher is rebuilt from ``checkpoint.json``: the zoo model with the run's weights
(``random`` seeded by the run's seed, as training did), cut where the checkpoint was cut; the
checkpoint fills that head. ``splitcomp eval --checkpoint``, ``report --checkpoint`` and
``plan --checkpoint`` all open checkpoints through :func:`open_checkpoints`, so several
checkpoints of one report or plan share one teacher (they must have been trained around the
same model and weights). :func:`untrained_part` keeps the images of a dataset that no
checkpoint trained on, so that every other figure can be computed on those images too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ImageFolderDataset
from ..partition import SplitError, split
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_meta
from .ckpt_eval import evaluate_checkpoint
from .splits import SplitRecord, eval_indices
from .tails import teacher_model


@dataclass
class Trained:
    """A checkpoint and the original halves at its cut (the teacher's head and frozen tail)."""

    folder: Path
    ckpt: Checkpoint
    head: nn.Module
    tail: nn.Module

    @property
    def name(self) -> str:
        """The checkpoint folder's name (how tables and plots tell checkpoints apart)."""
        return self.folder.resolve().name

    def evaluate(self, eval_ds: ImageFolderDataset, batch_size: int = 128, *,
                 limit: int | None = None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """:func:`~.ckpt_eval.evaluate_checkpoint` on ``eval_ds`` (its eval part; trained-on
        images refused), with the folder recorded."""
        result = evaluate_checkpoint(self.ckpt, self.head, self.tail, eval_ds, batch_size,
                                     limit=limit, progress=progress)
        result["checkpoint"] = str(self.folder)
        return result


def _teacher_key(folder: Path, meta: dict[str, Any], weights: str | None
                 ) -> tuple[str, str | None, int]:
    try:
        w = weights or meta["weights"]
        return meta["model"], w, int(meta["config"]["seed"]) if w == "random" else 0
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: bad checkpoint.json ({e!r})") from None


def open_checkpoints(folders: Sequence[str | Path], weights: str | None = None
                     ) -> tuple[nn.Module, list[Trained]]:
    """(the teacher, each checkpoint opened against it). ``weights`` replaces the weights the
    checkpoints recorded (e.g. the same file elsewhere). :class:`CheckpointError` when a
    folder is unreadable or the checkpoints were trained around different models, weights or
    (random weights) seeds."""
    if not folders:
        raise ValueError("open_checkpoints: no checkpoint")
    paths = [Path(f) for f in folders]
    keys = {_teacher_key(p, read_meta(p), weights): p for p in paths}
    if len(keys) > 1:
        seen = "; ".join(f"{p}: {m} weights {w}" + (f" seed {s}" if w == "random" else "")
                         for (m, w, s), p in keys.items())
        raise CheckpointError(f"the checkpoints were trained around different models ({seen})")
    ((name, w, seed),) = keys
    model = teacher_model(name, w, seed)
    size = model.default_cfg.input_size
    if size is None:
        raise CheckpointError(f"{name} does not take images")
    example = torch.zeros(1, *size)
    out = []
    for p in paths:
        cut = read_meta(p).get("cut")
        try:
            head, tail = split(model, cut, (example,))
        except (SplitError, TypeError) as e:
            raise CheckpointError(f"{p}: cut {cut!r} ({e})") from None
        out.append(Trained(p, load_checkpoint(p, head, tail), head, tail))
    return model, out


def untrained_part(ds: ImageFolderDataset, records: Sequence[SplitRecord]
                   ) -> tuple[ImageFolderDataset, int]:
    """(the images of ``ds`` outside the train part of every split in ``records``, how many of
    those splits were made from ``ds`` itself). For such a split the images kept are its eval
    part (checked by the file list); on any other data nothing is dropped here, and
    :meth:`Trained.evaluate` refuses an image with the pixels of a train image."""
    keep = set(range(len(ds)))
    own = 0
    for r in records:
        held = eval_indices(ds, r)
        if held is not None:
            keep &= set(held)
            own += 1
    return (ds if len(keep) == len(ds) else ds.subset(sorted(keep))), own


def check_untrained(ds: ImageFolderDataset, records: Sequence[SplitRecord]) -> None:
    """:class:`~.splits.TrainedOnError` if an image of ``ds`` has the pixels of an image of
    any split's train part (the images a report or plan is about to use)."""
    for r in records:
        r.check_disjoint(ds)
