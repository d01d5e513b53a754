"""Several server models from one bitstream (FrankenSplit, Ladon, MTL-Split).

One edge encoder is trained for several frozen tails: the primary model's and those of extra
zoo models cut at the same place, each with its own small decoder
(:attr:`~.bottleneck.Bottleneck.tails`). The server runs whichever tail a request names on
the one decoded latent. A checkpoint records each extra model as a :class:`TailRecord`;
:func:`open_tails` rebuilds their frozen halves (the teachers of their decoders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..partition import SplitError, split
from ..zoo import load_model


@dataclass(frozen=True)
class TailRecord:
    """An extra model served from the latent: zoo name, weights reference, cut."""

    model: str
    weights: str | None
    cut: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Teacher:
    """A frozen model cut in two; ``name``: its tail's name (None: the primary model)."""

    name: str | None
    head: nn.Module
    tail: nn.Module


def teacher_model(name: str, weights: str | None, seed: int) -> nn.Module:
    """The zoo model ``name`` with ``weights`` (``random``: seeded by ``seed``, as training
    seeds it)."""
    if weights == "random":
        torch.manual_seed(seed)
    return load_model(name, weights)


def open_teacher(rec: TailRecord, seed: int, like: nn.Module | None = None) -> Teacher:
    """The halves of ``rec``'s model (``random`` weights seeded by ``seed``, as the primary).
    ``like``: the primary model, whose inputs it must take (ValueError otherwise)."""
    model = teacher_model(rec.model, rec.weights, seed)
    cfg = model.default_cfg
    if like is not None and (cfg.preprocess(), cfg.input_size) != (
            like.default_cfg.preprocess(), like.default_cfg.input_size):
        raise ValueError(f"{rec.model} takes other inputs than {like.default_cfg.name}")
    try:
        head, tail = split(model, rec.cut, (torch.zeros(1, *cfg.input_size),))
    except SplitError as e:
        raise ValueError(f"{rec.model} at {rec.cut!r}: {e}") from None
    return Teacher(rec.model, head.eval(), tail.eval())


def open_tails(records: Sequence[TailRecord], seed: int, like: nn.Module | None = None
               ) -> list[Teacher]:
    """:func:`open_teacher` of each record, in order."""
    return [open_teacher(r, seed, like) for r in records]


@torch.no_grad()
def crossing_shapes(teachers: Sequence[Teacher], x: torch.Tensor) -> list[torch.Size]:
    """Each head's crossing tensor shape on ``x`` (one sample's, without the batch). ValueError
    unless each sends one 4-d tensor, all of the same spatial size (the decoders of one
    latent)."""
    shapes = []
    for t in teachers:
        out = t.head(x)
        if len(out) != 1 or out[0].dim() != 4:
            got = [tuple(o.shape) for o in out]
            who = t.name or "the model"
            raise ValueError(f"a bottleneck needs one 4-d crossing tensor, {who} sends {got}")
        shapes.append(out[0].shape[1:])
    first = teachers[0].name or "the model"
    for t, s in zip(teachers[1:], shapes[1:], strict=True):
        if s[1:] != shapes[0][1:]:
            raise ValueError(f"{t.name} crosses {tuple(s)} at its cut, {first} "
                             f"{tuple(shapes[0])}: every tail needs the same spatial size")
    return shapes
