"""Checkpoints of trained split components: a folder of plain files.

    CKPT_DIR/checkpoint.json    what it is: model, weights, cut, bottleneck shape, tuned head
                                blocks, extra tails (model, weights, cut), training settings,
                                step, history, figures, table id
    CKPT_DIR/weights.safetensors the tensors: the edge's head copy (``head.*``), the bottleneck
                                (``bottleneck.*``: encoder, entropy model, decoder, the extra
                                tails' decoders), with ``tune_tail`` the server's tail copy
                                (``tail.*``); the optimiser state is not kept (``resume``
                                restarts it with the schedule)
    CKPT_DIR/split.json         the data split (:class:`~.splits.SplitRecord`)
    CKPT_DIR/tables.sbnt        the ``bottleneck`` codec's tables (its session context)

Nothing is pickled: a checkpoint from someone else is data, not code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .bottleneck import Bottleneck, EdgeModel, ServerModel, trainable_head, trainable_tail
from .splits import SplitRecord
from .tails import TailRecord, Teacher, open_tails
from .trainer import Student, TrainConfig

FORMAT = "splitcomp-bottleneck"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, of another format or inconsistent."""


@dataclass
class Checkpoint:
    """A trained bottleneck at a cut of a zoo model, with what it was trained on."""

    model: str
    weights: str | None
    cut: str
    student: Student
    config: TrainConfig
    split: SplitRecord
    step: int = 0
    total_steps: int = 0
    tables: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)  #: figures, history, timings
    tails: list[TailRecord] = field(default_factory=list)  #: extra models served, in order

    @property
    def bottleneck(self) -> Bottleneck:
        return self.student.bottleneck

    def edge_model(self) -> EdgeModel:
        """Input -> latent: what the edge runs before the ``bottleneck`` codec."""
        return EdgeModel(self.student.head, self.bottleneck.encoder).eval()

    def server_model(self, tail: nn.Module, name: str | None = None) -> ServerModel:
        """Latent -> outputs through ``tail``, the frozen original tail of the model ``name``
        (None or :attr:`model`: the primary; else one of :attr:`tails`). The primary runs
        the checkpoint's fine-tuned tail copy instead where it has one (``tune_tail``)."""
        name = None if name == self.model else name
        if name is None and self.student.tail is not None:
            tail = self.student.tail
        return ServerModel(self.bottleneck.decoder_for(name), tail).eval()

    def extra_teachers(self) -> list[Teacher]:
        """The frozen halves of the extra tails' models, rebuilt from :attr:`tails`
        (:class:`CheckpointError` when one cannot be: weights missing here, ...)."""
        try:
            return open_tails(self.tails, self.config.seed)
        except (KeyError, ValueError, OSError) as e:
            raise CheckpointError(f"an extra tail's model: {e}") from None


def save_checkpoint(ckpt: Checkpoint, folder: str | Path) -> Path:
    """Write ``ckpt`` into ``folder`` (created); returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().contiguous().cpu()
               for k, v in ckpt.student.head.state_dict().items()}
    tensors.update({f"bottleneck.{k}": v.detach().contiguous().cpu()
                    for k, v in ckpt.bottleneck.state_dict().items()})
    if ckpt.student.tail is not None:
        tensors.update({f"tail.{k}": v.detach().contiguous().cpu()
                        for k, v in ckpt.student.tail.state_dict().items()})
    save_file(tensors, str(out / "weights.safetensors"))
    meta = {"format": FORMAT, "version": VERSION, "model": ckpt.model, "weights": ckpt.weights,
            "cut": ckpt.cut, "bottleneck": ckpt.bottleneck.config(),
            "tuned_blocks": ckpt.student.tuned_blocks,
            "tuned_tail_blocks": ckpt.student.tuned_tail_blocks, "config": ckpt.config.to_json(),
            "tails": [t.to_json() for t in ckpt.tails],
            "step": ckpt.step, "total_steps": ckpt.total_steps, "info": ckpt.info}
    (out / "checkpoint.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "split.json").write_text(json.dumps(ckpt.split.to_json()) + "\n")
    (out / "tables.sbnt").write_bytes(ckpt.tables)
    return out


def load_checkpoint(folder: str | Path, head: nn.Module,
                    tail: nn.Module | None = None) -> Checkpoint:
    """Read a checkpoint; ``head`` and ``tail`` are the original model's halves at the
    checkpoint's cut (the structures the saved copies fill; ``tail`` is needed only by a
    checkpoint with a fine-tuned tail)."""
    src = Path(folder)
    try:
        meta = json.loads((src / "checkpoint.json").read_text())
        split = SplitRecord.from_json(json.loads((src / "split.json").read_text()))
        tensors = load_file(str(src / "weights.safetensors"))
        tables = (src / "tables.sbnt").read_bytes()
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{src}: not a readable checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or (
            meta.get("version") != VERSION):
        got = meta if not isinstance(meta, dict) else meta.get("format")
        raise CheckpointError(f"{src}: format {got!r}, expected {FORMAT!r} {VERSION}")
    try:
        cfg = TrainConfig(**meta["config"])
        s_head, tuned = trainable_head(head, cfg.tune_head)
        s_tail, tuned_tail = None, []
        if cfg.tune_tail > 0:
            if tail is None:
                raise ValueError("it has a fine-tuned tail: pass the model's tail")
            s_tail, tuned_tail = trainable_tail(tail, cfg.tune_tail)
        bn = Bottleneck(**meta["bottleneck"])
        tails = [TailRecord(**t) for t in meta.get("tails", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{src}: bad checkpoint.json ({e!r})") from None
    if [t.model for t in tails] != list(bn.tails):
        raise CheckpointError(f"{src}: tails {[t.model for t in tails]} but decoders for "
                              f"{list(bn.tails)}")
    try:
        s_head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        bn.load_state_dict({k[11:]: v for k, v in tensors.items()
                            if k.startswith("bottleneck.")})
        if s_tail is not None:
            s_tail.load_state_dict({k[5:]: v for k, v in tensors.items()
                                    if k.startswith("tail.")})
            s_tail.eval()
    except RuntimeError as e:
        raise CheckpointError(f"{src}: weights do not fit the model ({e})") from None
    bn.eval()
    return Checkpoint(meta["model"], meta["weights"], meta["cut"],
                      Student(s_head, bn, tuned, s_tail, tuned_tail),
                      cfg, split, int(meta["step"]), int(meta["total_steps"]), tables,
                      dict(meta.get("info", {})), tails)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` alone (model, cut, ...), to build the head before loading."""
    try:
        return json.loads((Path(folder) / "checkpoint.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: not a readable checkpoint ({e})") from None


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold the same tensors (tests, resume checks)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
