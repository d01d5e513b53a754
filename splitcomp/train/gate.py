"""A per-input gate (NaviSplit): a tiny network on the head's features picks, for each input,
one of several configurations (codec settings, trained bottlenecks, an early exit).

Each configuration is an :class:`Option`: a way from a batch of images to predictions and the
exact bytes each sample sends. Every gate image is run through every option; the gate learns,
per option, whether that option's answer equals the full model's (one logit per option,
binary cross entropy). Its inputs are the head's features and, for each exit option, the
exit's own confidence on them (the edge computes it anyway, and it is the best single signal
of whether the exit is right). At run time it picks the cheapest option (by mean bytes) whose
predicted agreement reaches ``tau``, else the dearest; ``tau`` is calibrated on gate images
held out of its training. The gate learns and calibrates on images no trained option saw
(``--reserve``, :func:`gate_images`): on an option's own training images its answers look
better than they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageFolderDataset
from .checkpoint import CheckpointError
from .exits import RULES, ExitHead
from .plain_ckpt import load_plain, prefixed, save_plain
from .splits import SplitRecord, reserve_part

GATE_FORMAT, GATE_VERSION = "splitcomp-gate", 2
#: confidence signals per exit option (see :func:`exit_signals`)
SIGNALS_PER_EXIT = 2


def exit_signals(logits: torch.Tensor) -> torch.Tensor:
    """(N, classes) exit logits -> (N, 2): the max softmax probability as a log-odds (the
    regime that matters is p near 1) and the negative entropy."""
    logits = logits.float()
    top = logits.log_softmax(-1).amax(-1)
    odds = (top - torch.log1p(-top.exp().clamp(max=1 - 1e-7))).clamp(-20.0, 20.0)
    return torch.stack([odds, RULES["entropy"](logits)], -1)


class GateNet(nn.Module):
    """Features (N, K, H, W) and signals (N, S) -> (N, options) agreement logits: a small
    convolutional body on the features plus a linear term in the signals."""

    def __init__(self, in_channels: int, options: int, signals: int = 0,
                 hidden: int | None = None, blocks: int = 1) -> None:
        super().__init__()
        self.body = ExitHead(in_channels, options, hidden, blocks)
        self.signals = signals
        self.mix = nn.Linear(signals, options) if signals else None

    def config(self) -> dict[str, int]:
        c = self.body.config()
        return {"in_channels": c["in_channels"], "options": c["classes"],
                "signals": self.signals, "hidden": c["hidden"], "blocks": c["blocks"]}

    def forward(self, features: torch.Tensor, signals: torch.Tensor | None = None
                ) -> torch.Tensor:
        out = self.body(features)
        if self.mix is not None and signals is not None:
            out = out + self.mix(signals)
        return out


@dataclass
class Option:
    """A configuration: ``run(x)`` -> (predicted class per sample, bytes sent per sample).
    ``exit``: for an early exit, its head on the crossing tensor (its confidence is a gate
    input)."""

    name: str
    run: Callable[[torch.Tensor], tuple[torch.Tensor, list[int]]]
    split: SplitRecord | None = None  #: a trained option's split (None: training-free)
    exit: nn.Module | None = None


@dataclass
class OptionScores:
    """Per image and option: predictions (N, K) and bytes (N, K); the full model's
    predictions and the labels (N,); the head's features (N, ...) and the exits' confidence
    signals (N, S) for the gate."""

    preds: torch.Tensor
    sizes: torch.Tensor
    teacher: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor
    signals: torch.Tensor

    def cost_order(self) -> torch.Tensor:
        """Option indices, cheapest (mean bytes) first."""
        return torch.argsort(self.sizes.double().mean(0), stable=True)

    def agree(self) -> torch.Tensor:
        """(N, K) bool: the option's answer equals the full model's (the gate's targets)."""
        return self.preds == self.teacher[:, None]


def signals_of(exits: Sequence[nn.Module], features: torch.Tensor) -> torch.Tensor:
    """(N, SIGNALS_PER_EXIT * len(exits)) confidence signals of the exit heads."""
    if not exits:
        return features.new_zeros((features.shape[0], 0))
    return torch.cat([exit_signals(e(features)) for e in exits], 1)


def gate_images(train: ImageFolderDataset, record: SplitRecord, options: Sequence[Option]
                ) -> tuple[ImageFolderDataset, str]:
    """(the train-part images the gate learns and calibrates on, a note on them). When the
    trained options kept images out of their training (``--reserve``), the gate uses those:
    on the images an option trained on its answers look better than they are, so labels and
    ``tau`` learned there do not carry to new inputs. ValueError when the options disagree."""
    trained = [o for o in options if o.split is not None]
    if not trained:
        return train, "train part (no trained option)"
    for o in trained:
        if not o.split.same_split(record):
            raise ValueError(f"--option {o.name}: trained on another split of the data than "
                             "--n-train/--seed make")
    reserved = {o.split.reserved for o in trained}
    if reserved == {0}:
        return train, ("train part: the trained options learned on these images (train them "
                       "with --reserve N): the gate's labels and tau are optimistic")
    if len(reserved) > 1:
        raise ValueError("the trained options reserve different numbers of images "
                         f"({sorted(reserved)}): train them with the same --reserve")
    _, kept = reserve_part(train, o.split)
    assert kept is not None
    return kept, f"the {len(kept)} train-part images the options reserved"


@torch.no_grad()
def score_options(options: Sequence[Option], head: nn.Module, tail: nn.Module,
                  ds: ImageFolderDataset, batch_size: int = 250,
                  progress: Callable[[int], None] | None = None) -> OptionScores:
    """Run every image of ``ds`` through the full model and every option."""
    exits = [o.exit for o in options if o.exit is not None]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "preds", "sizes", "teacher", "labels", "features", "signals")}
    for x, y in ds.batches(batch_size):
        (feat,) = head(x)
        parts["teacher"].append(tail(feat).argmax(-1))
        parts["features"].append(feat)
        parts["signals"].append(signals_of(exits, feat))
        parts["labels"].append(y)
        runs = [o.run(x) for o in options]
        parts["preds"].append(torch.stack([p for p, _ in runs], 1))
        parts["sizes"].append(torch.tensor([s for _, s in runs], dtype=torch.int64).T)
        if progress is not None:
            progress(len(y))
    return OptionScores(**{k: torch.cat(v) for k, v in parts.items()})


@torch.enable_grad()
def train_gate(features: torch.Tensor, signals: torch.Tensor, agree: torch.Tensor,
               epochs: int = 60, batch_size: int = 128, lr: float = 3e-3,
               seed: int = 0) -> tuple[GateNet, list[float]]:
    """Fit a gate on cached features and signals to the (N, K) agreement targets; returns it
    and the per-epoch mean loss."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    gate = GateNet(features.shape[1], agree.shape[1], signals.shape[1])
    opt = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    target = agree.float()
    losses = []
    gate.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(target), generator=g), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            flip = torch.rand(len(idx), generator=g) < 0.5
            f = torch.where(flip[:, None, None, None], features[idx].flip(3), features[idx])
            loss = F.binary_cross_entropy_with_logits(gate(f, signals[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / len(target))
    return gate.eval(), losses


@torch.no_grad()
def choose(gate: nn.Module, features: torch.Tensor, signals: torch.Tensor,
           order: torch.Tensor, tau: float) -> torch.Tensor:
    """Per input, the cheapest option (in ``order``) whose predicted agreement with the full
    model reaches ``tau``; the dearest where none does."""
    probs = gate(features, signals).sigmoid()[:, order]
    reach = probs >= tau - 1e-9
    reach[:, -1] = True
    return order[reach.float().argmax(1)]


@dataclass
class GateResult:
    """Figures of a gate at one ``tau`` against the fixed options on the same images."""

    tau: float
    top1: float
    bytes_per_sample: float
    best_fixed: int  #: the cheapest option at least as accurate as the gate (-1: none)
    best_fixed_top1: float
    best_fixed_bytes: float
    share: list[float]  #: of inputs per option

    @property
    def saving(self) -> float:
        """1 - gate bytes / best fixed bytes (negative: the gate costs more)."""
        if self.best_fixed < 0 or self.best_fixed_bytes <= 0:
            return float("-inf")
        return 1.0 - self.bytes_per_sample / self.best_fixed_bytes


def gate_result(s: OptionScores, picks: torch.Tensor, tau: float) -> GateResult:
    n, k = s.preds.shape
    rows = torch.arange(n)
    top1 = 100.0 * float((s.preds[rows, picks] == s.labels).double().mean())
    size = float(s.sizes[rows, picks].double().mean())
    fixed_top1 = 100.0 * (s.preds == s.labels[:, None]).double().mean(0)
    fixed_bytes = s.sizes.double().mean(0)
    ok = [j for j in range(k) if float(fixed_top1[j]) >= top1 - 1e-9]
    best = min(ok, key=lambda j: float(fixed_bytes[j])) if ok else -1
    return GateResult(tau, top1, size, best,
                      float(fixed_top1[best]) if ok else float("nan"),
                      float(fixed_bytes[best]) if ok else float("nan"),
                      [float((picks == j).double().mean()) for j in range(k)])


#: thresholds tried by :func:`calibrate_tau` (finer near 1, where cheap options are trusted)
TAUS = tuple(i / 40 for i in range(1, 40)) + (0.985, 0.99, 0.995, 0.998, 0.999)


def calibrate_tau(gate: nn.Module, s: OptionScores, max_drop_pp: float = 1.0,
                  taus: Sequence[float] = TAUS) -> GateResult:
    """The ``tau`` whose saving against the best fixed option is largest on ``s`` among those
    keeping the gate's top-1 within ``max_drop_pp`` of the full model's (else the most
    accurate ``tau``). Without the floor a gate that sends almost everything to the cheapest
    option "saves" against the next one while being as poor as the cheapest."""
    order = s.cost_order()
    floor = 100.0 * float((s.teacher == s.labels).double().mean()) - max_drop_pp
    results = [gate_result(s, choose(gate, s.features, s.signals, order, t), t) for t in taus]
    ok = [r for r in results if r.top1 >= floor - 1e-9]
    if not ok:
        return max(results, key=lambda r: (r.top1, -r.bytes_per_sample))
    return max(ok, key=lambda r: (r.saving, r.top1))


class EdgeGate(nn.Module):
    """What the edge runs: head features -> the option index per input (the calibrated rule
    of :func:`choose`), the exits' confidence signals computed by the exit heads it holds.
    ``options``: the option specs, in index order."""

    def __init__(self, gate: GateNet, exits: Sequence[nn.Module], order: Sequence[int],
                 tau: float, options: Sequence[str]) -> None:
        super().__init__()
        self.gate, self.tau, self.options = gate.eval(), float(tau), list(options)
        self.exits = nn.ModuleList(exits).eval()
        self.register_buffer("order", torch.tensor(list(order), dtype=torch.int64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return choose(self.gate, features, signals_of(list(self.exits), features), self.order,
                      self.tau)


def save_gate(folder: str | Path, edge: EdgeGate, model: str, weights: str | None, cut: str,
              split: SplitRecord, info: dict | None = None) -> Path:
    meta = {"model": model, "weights": weights, "cut": cut, "options": edge.options,
            "order": edge.order.tolist(), "tau": edge.tau, "gate": edge.gate.config(),
            "exits": [e.config() for e in edge.exits], "info": info or {}}
    tensors = {f"gate.{k}": v for k, v in edge.gate.state_dict().items()}
    for i, e in enumerate(edge.exits):
        tensors.update({f"exit{i}.{k}": v for k, v in e.state_dict().items()})
    return save_plain(folder, GATE_FORMAT, GATE_VERSION, meta, tensors, split)


def load_gate(folder: str | Path) -> tuple[EdgeGate, dict]:
    """(the edge's gate, checkpoint.json) (:class:`CheckpointError` when it is not one)."""
    meta, tensors, _ = load_plain(folder, GATE_FORMAT, GATE_VERSION)
    try:
        gate = GateNet(**meta["gate"])
        gate.load_state_dict(prefixed(tensors, "gate"))
        exits = []
        for i, cfg in enumerate(meta["exits"]):
            e = ExitHead(**cfg)
            e.load_state_dict(prefixed(tensors, f"exit{i}"))
            exits.append(e)
        if gate.signals != SIGNALS_PER_EXIT * len(exits):
            raise ValueError(f"{gate.signals} signals for {len(exits)} exits")
        return EdgeGate(gate, exits, meta["order"], meta["tau"], meta["options"]), meta
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: bad gate checkpoint ({e!r})") from None
