"""Training a learned bottleneck around a frozen model (feature distillation, then KD on logits).

Two stages, as Entropic Student (Matsubara et al. 2022) trains its bottleneck:

1. *feature distillation* (the first ``feature_share`` of the steps): the decoder's output
   should equal the teacher's crossing tensor (MSE, normalised by the teacher's energy), with
   the rate term ramping up;
2. *KD on logits*: the student's logits through the frozen tail should match the teacher's
   (KL at ``temperature``), a small feature term kept, plus ``label_weight`` x cross-entropy
   when labels are given.

With extra teachers (:mod:`.tails`), every tail's decoder reads the same latent and the loss
sums these terms over all tails (the primary first), plus one rate term: ``beta`` x (bits of
the latent per element of the original cut). Every step
draws a new view of each image (crop, flip, optional mixup/CutMix) and runs the teacher on that
same view, so 5,000 images give many distinct targets. The schedule (cosine learning rate)
fits a step count from ``epochs``, or from ``minutes`` after timing the first steps.

With ``symbol_error_rate`` > 0 (BER-aware training) the decoders see the latent as a link
with bit errors leaves it after the ``resilient`` codec's concealment: each latent row of each
sample replaced by the channel medians at that rate (:func:`conceal_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .augment import crop_flip, mix
from .bottleneck import Bottleneck, freeze, parameters, trainable_head, trainable_tail
from .schedule import Batches, StepBudget
from .tails import Teacher, crossing_shapes


@dataclass
class TrainConfig:
    """Settings of one bottleneck training run (recorded in the checkpoint)."""

    channels: int = 16
    stride: int = 2
    hidden: int | None = None
    beta: float = 1.0
    tune_head: int = 1  #: the head's last blocks fine-tuned on the edge (0: head frozen)
    #: the primary tail's first blocks fine-tuned in stage 2, as a server-side copy (0: the
    #: tail stays the original, frozen; extra tails always do)
    tune_tail: int = 0
    tail_lr: float = 1e-4  #: of the tail copy: it starts trained, so it moves gently
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    aux_lr: float = 1e-2
    weight_decay: float = 1e-4
    feature_share: float = 0.25
    temperature: float = 4.0
    feature_weight: float = 0.1  #: of the feature term in stage 2
    label_weight: float = 0.0
    pad: int = 4
    mix_alpha: float = 1.0  #: 0 turns mixing off
    seed: int = 0
    device: str = "cpu"
    #: BER-aware training: the probability that a latent row (all channels) of a sample is
    #: replaced by the channel medians, as a concealed ``resilient`` slice decodes (0: off)
    symbol_error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.symbol_error_rate < 1.0:
            raise ValueError(f"symbol_error_rate must be in [0, 1), got "
                             f"{self.symbol_error_rate}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-logged-step figures of a run."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    bits_per_sample: list[float] = field(default_factory=list)
    agree: list[float] = field(default_factory=list)  #: student == teacher top-1 on the batch
    seconds: float = 0.0
    steps: int = 0

    def log(self, step: int, total: int | None, loss: float, agree: float,
            progress: Callable[[dict[str, float]], None] | None, **extra: float) -> None:
        """Record one step's figures (``bits`` among ``extra`` too) and pass all of them
        to ``progress``."""
        self.step.append(step)
        self.loss.append(loss)
        self.agree.append(agree)
        if "bits" in extra:
            self.bits_per_sample.append(extra["bits"])
        if progress is not None:
            progress({"step": step, "total": total or 0, "loss": loss, "agree": agree,
                      **extra})


@dataclass
class Student:
    """What training produces: the edge's head copy and the bottleneck (and, with
    ``tune_tail``, the server's copy of the primary tail)."""

    head: nn.Module
    bottleneck: Bottleneck
    tuned_blocks: list[str]
    tail: nn.Module | None = None
    tuned_tail_blocks: list[str] = field(default_factory=list)


def conceal_rows(y: torch.Tensor, medians: torch.Tensor, rate: float,
                 g: torch.Generator) -> torch.Tensor:
    """``y`` (B, C, H, ...) with each sample's rows (one index of axis 2, every channel)
    replaced by the channel ``medians`` with probability ``rate``: what the decoder gets from
    a ``resilient`` stream (sliced along rows, its default) whose slice failed its check. A
    latent without rows (B, C) loses whole channels instead. No gradient reaches what was
    replaced."""
    b, c = y.shape[:2]
    units = y.shape[2] if y.dim() > 2 else c
    lost = torch.rand(b, units, generator=g) < rate  # the CPU generator: seeded runs repeat
    shape = (b, 1, units, *([1] * (y.dim() - 3))) if y.dim() > 2 else (b, c)
    med = medians.detach().reshape(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)
    return torch.where(lost.reshape(shape).to(y.device), med, y)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: KL(teacher || student) at ``temperature``, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def tail_loss(recon: torch.Tensor, t_feat: torch.Tensor, t_logits: torch.Tensor,
              tail: nn.Module, cfg: TrainConfig, stage1: bool,
              labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(one tail's distillation loss, its student logits; None in stage 1): the feature term
    (MSE over the teacher's energy), then in stage 2 KD on logits through ``tail`` (frozen,
    or the server's fine-tuned copy),
    ``feature_weight`` x the feature term and, with ``labels``, the label term."""
    feat = F.mse_loss(recon, t_feat) / t_feat.pow(2).mean().clamp(min=1e-8)
    if stage1:
        return feat, None
    s_logits = tail(recon)
    loss = kd_loss(s_logits, t_logits, cfg.temperature) + cfg.feature_weight * feat
    if labels is not None and cfg.label_weight > 0 and cfg.mix_alpha <= 0:
        loss = loss + cfg.label_weight * F.cross_entropy(s_logits, labels)
    return loss, s_logits


@torch.enable_grad()  # training needs autograd whatever the caller switched off
def train_bottleneck(head: nn.Module, tail: nn.Module, images: torch.Tensor,
                     normalize: Callable[[torch.Tensor], torch.Tensor], cfg: TrainConfig,
                     labels: torch.Tensor | None = None, student: Student | None = None,
                     progress: Callable[[dict[str, float]], None] | None = None,
                     start_step: int = 0, total_steps: int | None = None,
                     on_checkpoint: Callable[[Student, int, int], None] | None = None,
                     checkpoint_every: float = 300.0,
                     extra: Sequence[Teacher] = ()) -> tuple[Student, History]:
    """Train a bottleneck between ``head`` and ``tail`` (both frozen; the head is copied for
    fine-tuning) on ``images`` (N, C, H, W uint8, the train part) normalised by ``normalize``.
    ``extra``: more frozen models cut at the same spatial size, a decoder trained for each
    tail on the same latent (:attr:`Bottleneck.tails`, by the teacher's name).

    ``student``/``start_step``/``total_steps`` resume a run. Returns the student and its
    history; ``progress`` gets the figures of every logged step; ``on_checkpoint(student,
    step, total_steps)`` is called every ``checkpoint_every`` seconds (not at the end), so a
    killed run can resume from what it saved (``total_steps`` is 0 while still unknown).
    """
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    teachers = [Teacher(None, head, tail), *extra]
    for t in teachers:
        freeze(t.head.to(device), t.tail.to(device))
    shapes = crossing_shapes(teachers, normalize(images[:2]).to(device))
    elements = shapes[0].numel()
    if student is None:
        s_head, tuned = trainable_head(head, cfg.tune_head)
        student = Student(s_head, Bottleneck(
            shapes[0][0], cfg.channels, cfg.stride, cfg.hidden,
            {t.name: s[0] for t, s in zip(extra, shapes[1:], strict=True)}), tuned)
        if cfg.tune_tail > 0:
            student.tail, student.tuned_tail_blocks = trainable_tail(tail, cfg.tune_tail)
    s_head, bn = student.head.to(device), student.bottleneck.to(device)
    s_tails = [t.tail for t in teachers]  # what the student's logits go through
    if student.tail is not None:
        s_tails[0] = student.tail.to(device).eval()  # BatchNorm statistics stay the teacher's
    if set(bn.tails) != {t.name for t in extra}:
        raise ValueError(f"the bottleneck serves tails {sorted(bn.tails)}, not "
                         f"{sorted(str(t.name) for t in extra)}")
    decoders = [bn.decoder_for(t.name) for t in teachers]
    tail_params = list(parameters(student.tail)) if student.tail is not None else []
    main_params = [*parameters(s_head, bn.encoder, *decoders), *tail_params] + [
        p for n, p in bn.entropy.named_parameters() if n != "quantiles"]
    tail_ids = {id(p) for p in tail_params}
    groups = [{"params": [p for p in main_params if id(p) not in tail_ids], "base_lr": cfg.lr}]
    if tail_params:
        groups.append({"params": tail_params, "base_lr": cfg.tail_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    aux = torch.optim.Adam([bn.entropy.quantiles], lr=cfg.aux_lr)
    n = images.shape[0]
    steps_per_epoch = max(n // cfg.batch_size, 1)
    hist = History()
    budget = StepBudget(total_steps or (round(cfg.epochs * steps_per_epoch)
                                        if cfg.epochs else None), cfg.minutes, start_step)
    step = start_step
    last_save = time.perf_counter()
    batches = Batches(n, cfg.batch_size, g)
    while budget.running(step):
        total = budget.update(step)
        idx = batches.next()
        x = crop_flip(images[idx], cfg.pad, g)
        x = normalize(x).to(device)
        if cfg.mix_alpha > 0:
            x = mix(x, g, cfg.mix_alpha)
        frac = budget.fraction(step)
        budget.set_lr(opt, step, cfg.lr)
        s_head.train(False)
        bn.train(True)
        (s_feat,) = s_head(x)
        y_hat, lik = bn.entropy(bn.encoder(s_feat))
        if cfg.symbol_error_rate > 0:
            y_hat = conceal_rows(y_hat, bn.entropy.medians, cfg.symbol_error_rate, g)
        bits = bn.entropy.bits(lik) / x.shape[0]
        stage1 = frac < cfg.feature_share
        ramp = frac / cfg.feature_share if stage1 else 1.0
        loss = cfg.beta * ramp * bits / elements
        y = labels[idx].to(device) if labels is not None else None
        for t, dec, s_tail in zip(teachers, decoders, s_tails, strict=True):
            with torch.no_grad():
                (t_feat,) = t.head(x)
                t_logits = t.tail(t_feat)
            part, s_logits = tail_loss(dec(y_hat), t_feat, t_logits, s_tail, cfg, stage1, y)
            loss = loss + part
            if t.name is None:  # the primary's logits give the agreement shown
                shown = s_logits, t_logits
        s_logits, t_logits = shown
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 5.0)
        opt.step()
        aux.zero_grad(set_to_none=True)
        bn.entropy.aux_loss().backward()
        aux.step()
        step += 1
        if step % 10 == 0 or step == total:
            agree = float("nan") if s_logits is None else float(
                (s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
            hist.log(step, total, float(loss.detach()), agree, progress,
                     bits=float(bits.detach()), stage=1 if stage1 else 2)
        if (on_checkpoint is not None and step != total
                and time.perf_counter() - last_save >= checkpoint_every):
            on_checkpoint(student, step, total or 0)
            last_save = time.perf_counter()
    hist.seconds = budget.seconds
    hist.steps = step - start_step
    bn.eval()
    return student, hist
