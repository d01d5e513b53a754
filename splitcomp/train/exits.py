"""Early exit on the edge: a small classifier on the crossing tensor answers when confident.

    x --head--> crossing tensor --exit head--> logits, confidence
        confidence >= threshold: answered on the edge, nothing sent
        otherwise: the crossing tensor is coded and sent; the server's tail answers

The exit head (a strided convolution, BatchNorm, ReLU, global pooling, a linear layer) is
trained by distillation from the frozen model's logits (KD at a temperature, plus the labels)
on augmented views of the train part; head and tail stay frozen, so the server is unchanged.
The confidence rule (:data:`RULES`: max-softmax or negative entropy) and a threshold
calibrated on images the exit did not train on (:func:`calibrate`) decide which inputs exit:
the lowest threshold whose exits cost at most the target drop in top-1 against the answers
the server path gives on those images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .augment import crop_flip
from .bottleneck import freeze
from .schedule import Batches, StepBudget
from .trainer import History, kd_loss


def _max_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1).amax(-1)


def _neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    return (logp.exp() * logp).sum(-1)


#: confidence rules: logits (N, classes) -> (N,), higher = more confident
RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": _max_softmax, "entropy": _neg_entropy}


class ExitHead(nn.Module):
    """Crossing tensor (N, K, H, W) -> logits (N, classes): ``blocks`` 3x3 convolutions
    (the first strided, each with BatchNorm and ReLU), global pooling, a linear layer."""

    def __init__(self, in_channels: int, classes: int, hidden: int | None = None,
                 blocks: int = 1) -> None:
        super().__init__()
        hidden = hidden or 2 * in_channels
        self.in_channels, self.classes, self.hidden, self.blocks = (
            in_channels, classes, hidden, blocks)
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, 2 if i == 0
                                 else 1, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(hidden, classes))

    def config(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "classes": self.classes, "hidden": self.hidden,
                "blocks": self.blocks}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class EdgeExit(nn.Module):
    """What the edge runs beside the head: the exit head and its rule. ``forward`` gives
    (logits, confidence, exits: a bool per input)."""

    def __init__(self, head: ExitHead, threshold: float, rule: str = "softmax") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"confidence rule {rule!r}: one of {', '.join(RULES)}")
        self.head, self.threshold, self.rule = head, float(threshold), rule

    def forward(self, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.head(features)
        conf = RULES[self.rule](logits)
        return logits, conf, conf >= self.threshold


@dataclass
class ExitConfig:
    """Settings of one exit training run (recorded in its checkpoint)."""

    hidden: int | None = None
    blocks: int = 2  #: convolutions of the exit head
    rule: str = "softmax"
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    temperature: float = 4.0
    label_weight: float = 0.5
    pad: int = 4
    n_calib: int = 1000  #: train-part images held out of training to calibrate the threshold
    margin: float = 1.0  #: standard deviations of the calibration cost kept in reserve
    seed: int = 0
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.enable_grad()
def train_exit(head: nn.Module, tail: nn.Module, images: torch.Tensor,
               normalize: Callable[[torch.Tensor], torch.Tensor], cfg: ExitConfig,
               labels: torch.Tensor | None = None,
               progress: Callable[[dict[str, float]], None] | None = None
               ) -> tuple[ExitHead, History]:
    """Train an exit head on the crossing tensor of the frozen ``head`` against the frozen
    model's logits (``images``: N uint8 images of the train part; ``labels`` optional)."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    freeze(head.to(device), tail.to(device))
    with torch.no_grad():
        (feat,) = head(normalize(images[:2]).to(device))
        classes = tail(feat).shape[-1]
    exit_head = ExitHead(feat.shape[1], classes, cfg.hidden, cfg.blocks).to(device)
    opt = torch.optim.AdamW(exit_head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = images.shape[0]
    budget = StepBudget(round(cfg.epochs * max(n // cfg.batch_size, 1)) if cfg.epochs
                        else None, cfg.minutes)
    hist, step, batches = History(), 0, Batches(n, cfg.batch_size, g)
    exit_head.train()
    while budget.running(step):
        total = budget.update(step)
        idx = batches.next()
        x = normalize(crop_flip(images[idx], cfg.pad, g)).to(device)
        with torch.no_grad():
            (feat,) = head(x)
            t_logits = tail(feat)
        s_logits = exit_head(feat)
        loss = kd_loss(s_logits, t_logits, cfg.temperature)
        if labels is not None and cfg.label_weight > 0:
            loss = loss + cfg.label_weight * F.cross_entropy(s_logits, labels[idx].to(device))
        budget.set_lr(opt, step, cfg.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0 or step == total:
            agree = float((s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
            hist.log(step, total, float(loss.detach()), agree, progress)
    hist.seconds, hist.steps = budget.seconds, step
    return exit_head.eval(), hist


def calibrate(confidence: torch.Tensor, exit_right: torch.Tensor, server_right: torch.Tensor,
              target_drop_pp: float, margin: float = 0.0) -> float:
    """The lowest threshold whose exits cost at most ``target_drop_pp`` points of top-1 on
    these images: inputs exit most-confident first, each exit trading the server path's
    answer (``server_right``) for the exit's (``exit_right``); ``inf`` when not even the
    most confident input can exit. ``margin``: standard deviations of the cost added before
    comparing (the cost of k exits is a sum of k terms in {-1, 0, 1}; its spread is taken as
    the square root of the number of exits whose answer differs from the server path's), so
    a threshold chosen on a few hundred images holds on others: choosing the largest k
    whose measured cost fits is biased low."""
    n = confidence.numel()
    if n == 0:
        return float("inf")
    order = torch.argsort(confidence, descending=True, stable=True)
    conf = confidence[order]
    diff = server_right[order].double() - exit_right[order].double()
    cost = 100.0 * (torch.cumsum(diff, 0) + margin * torch.cumsum(diff.abs(), 0).sqrt()) / n
    # exiting the k most confident must be expressible as a threshold (no tie across k)
    distinct = torch.ones(n, dtype=torch.bool)
    distinct[:-1] = conf[1:] < conf[:-1]
    ks = torch.nonzero((cost <= target_drop_pp) & distinct).flatten()
    return float(conf[int(ks.max())]) if ks.numel() else float("inf")
