"""Client adapters (SALT): a small module on the edge between the frozen head and the codec,
trained on one client's own data while the server's model stays untouched.

    x (the client's shifted inputs) [--input adapter-->] frozen head --> crossing tensor
        --adapter--> codec --> the server's unchanged tail

The adapter on the crossing tensor is SALT's; an input adapter (on the normalised image,
before the head) is for shifts that destroy what the head's early layers need and a feature
adapter cannot bring back (JPEG blocking: measured in ``docs/results/trained_parts.md``).

Each adapter is residual (``f + up(relu(bn(down(f))))``, ``up`` starting at zero), so an
untrained adapter is the identity and training can only move away from the unadapted
model as far as the client's data pays. It trains on the client's labelled images (cross
entropy through the frozen tail, crops and flips); several clients, each with its own
adapter, talk to one deployment (:class:`AdaptedHead` is what a client runs as its head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import codecs
from ..data import ImageFolderDataset
from .augment import crop_flip
from .bottleneck import freeze
from .checkpoint import CheckpointError
from .plain_ckpt import load_plain, prefixed, save_plain
from .schedule import Batches, StepBudget
from .splits import SplitRecord
from .trainer import History

FORMAT = "splitcomp-adapter"
VERSION = 1


class Adapter(nn.Module):
    """Tensor (N, K, H, W) -> adapted tensor of the same shape (identity at init): ``depth``
    3x3 convolutions of ``hidden`` channels (BN, ReLU), then a zero-initialised 1x1 back."""

    def __init__(self, channels: int, hidden: int | None = None, depth: int = 1) -> None:
        super().__init__()
        hidden = hidden or channels
        self.channels, self.hidden, self.depth = channels, hidden, depth
        self.down = nn.Conv2d(channels, hidden, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        if depth > 1:
            self.more = nn.Sequential(*[m for _ in range(depth - 1) for m in (
                nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU())])
        self.up = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "hidden": self.hidden, "depth": self.depth}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.down(features)))
        if self.depth > 1:
            h = self.more(h)
        return features + self.up(h)


class AdaptedHead(nn.Module):
    """A client's input adapter (on the normalised image), the frozen head, and its adapter on
    the crossing tensor (either may be absent); returns a 1-tuple like a cut head, so a
    :class:`~splitcomp.runtime.SplitClient` runs it as its head."""

    def __init__(self, head: nn.Module, adapter: Adapter | None,
                 input_adapter: Adapter | None = None) -> None:
        super().__init__()
        self.head, self.adapter, self.input_adapter = head, adapter, input_adapter

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor]:
        if self.input_adapter is not None:
            inputs = (self.input_adapter(inputs[0]), *inputs[1:])
        (features,) = self.head(*inputs)
        return (features if self.adapter is None else self.adapter(features),)


#: where an adapter goes: after the head (on the crossing tensor), on the input, or both
PLACES = ("cut", "input", "both")
#: what the adapter imitates besides the labels: nothing, or the frozen model on clean images
TEACHERS = ("none", "clean")


@dataclass
class AdapterConfig:
    """Settings of one adapter run (recorded in its checkpoint)."""

    shift: str = ""
    place: str = "cut"
    hidden: int | None = None
    depth: int | None = None  #: convolutions per adapter (None: 1 at the cut, 2 on the input)
    input_hidden: int = 32
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pad: int = 4
    seed: int = 0
    device: str = "cpu"
    teacher: str = "none"  #: "clean": distil the frozen model on each image's clean twin
    kd_weight: float = 1.0  #: weight of the KL to the clean logits (teacher "clean")
    feature_weight: float = 0.0  #: weight of the relative MSE to the clean cut features
    temperature: float = 4.0  #: of the KL

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pair_loss(logits: torch.Tensor, labels: torch.Tensor, feat: torch.Tensor,
              clean_logits: torch.Tensor, clean_feat: torch.Tensor, cfg: AdapterConfig
              ) -> torch.Tensor:
    """Cross entropy on the labels + ``kd_weight`` x T^2 x KL(clean answer || adapted
    answer at temperature T) + ``feature_weight`` x the MSE of the adapted features to the
    clean ones relative to the clean features' mean square (scale-free across cuts)."""
    loss = F.cross_entropy(logits, labels)
    if cfg.kd_weight:
        t = cfg.temperature
        kl = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(clean_logits / t, -1),
                      reduction="batchmean", log_target=True)
        loss = loss + cfg.kd_weight * t * t * kl
    if cfg.feature_weight:
        rel = F.mse_loss(feat, clean_feat) / clean_feat.pow(2).mean().clamp_min(1e-8)
        loss = loss + cfg.feature_weight * rel
    return loss


def check_config(cfg: AdapterConfig, clean: torch.Tensor | None, images: torch.Tensor) -> None:
    """ValueError for a place or teacher not known, or clean twins missing or misshapen."""
    if cfg.place not in PLACES:
        raise ValueError(f"place {cfg.place!r}: one of {', '.join(PLACES)}")
    if cfg.teacher not in TEACHERS:
        raise ValueError(f"teacher {cfg.teacher!r}: one of {', '.join(TEACHERS)}")
    if cfg.teacher == "clean" and (clean is None or clean.shape != images.shape):
        raise ValueError("teacher 'clean' needs each shifted image's clean twin (same shape)")
    if min(cfg.kd_weight, cfg.feature_weight) < 0 or cfg.temperature <= 0:
        raise ValueError("kd_weight and feature_weight >= 0, temperature > 0")


@torch.enable_grad()
def train_adapter(head: nn.Module, tail: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  normalize: Callable[[torch.Tensor], torch.Tensor], cfg: AdapterConfig,
                  progress: Callable[[dict[str, float]], None] | None = None,
                  clean: torch.Tensor | None = None) -> tuple[AdaptedHead, History]:
    """Train the adapters ``cfg.place`` names around the frozen ``head``, through the frozen
    ``tail``, on the client's ``images`` (N uint8, already shifted) and ``labels``; returns
    the adapted head (what the client runs). ``clean`` (the same images before the shift)
    is what ``cfg.teacher == "clean"`` distils from, each view cropped and flipped alike."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    freeze(head.to(device), tail.to(device))
    check_config(cfg, clean, images)
    pairs = cfg.teacher == "clean"
    with torch.no_grad():
        x0 = normalize(images[:2]).to(device)
        (feat,) = head(x0)
    adapter = (Adapter(feat.shape[1], cfg.hidden, cfg.depth or 1)
               if cfg.place in ("cut", "both") else None)
    before = (Adapter(x0.shape[1], cfg.input_hidden, cfg.depth or 2)
              if cfg.place in ("input", "both") else None)
    edge = AdaptedHead(head, adapter, before).to(device)
    opt = torch.optim.AdamW([p for p in edge.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    n, c = images.shape[0], images.shape[1]
    budget = StepBudget(round(cfg.epochs * max(n // cfg.batch_size, 1)) if cfg.epochs
                        else None, cfg.minutes)
    hist, step, batches = History(), 0, Batches(n, cfg.batch_size, g)
    edge.train()
    head.eval()
    while budget.running(step):
        total = budget.update(step)
        idx = batches.next()
        if pairs:  # one crop and flip for both twins
            views = crop_flip(torch.cat([images[idx], clean[idx]], 1), cfg.pad, g)
            x, xc = normalize(views[:, :c]).to(device), normalize(views[:, c:]).to(device)
        else:
            x = normalize(crop_flip(images[idx], cfg.pad, g)).to(device)
        y = labels[idx].to(device)
        if before is None:  # nothing before the head: no gradient through it
            with torch.no_grad():
                (feat,) = head(x)
            feat = adapter(feat)
        else:
            (feat,) = edge(x)
        logits = tail(feat)
        if pairs:
            with torch.no_grad():
                (clean_feat,) = head(xc)
                clean_logits = tail(clean_feat)
            loss = pair_loss(logits, y, feat, clean_logits, clean_feat, cfg)
        else:
            loss = F.cross_entropy(logits, y)
        budget.set_lr(opt, step, cfg.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0 or step == total:
            acc = float((logits.argmax(-1) == y).float().mean())
            hist.log(step, total, float(loss.detach()), acc, progress)
    hist.seconds, hist.steps = budget.seconds, step
    return edge.eval(), hist


@dataclass
class AdapterCheckpoint:
    """A client's adapter at a cut of a zoo model, and the shift it was trained for."""

    model: str
    weights: str | None
    cut: str
    adapter: Adapter | None
    config: AdapterConfig
    split: SplitRecord
    info: dict[str, Any] = field(default_factory=dict)
    input_adapter: Adapter | None = None

    def edge_model(self, head: nn.Module) -> AdaptedHead:
        return AdaptedHead(head, self.adapter, self.input_adapter).eval()

    def params(self) -> int:
        """Trained parameters (both adapters)."""
        return sum(p.numel() for a in (self.adapter, self.input_adapter) if a is not None
                   for p in a.parameters())


def save_adapter(ck: AdapterCheckpoint, folder: str | Path) -> Path:
    parts = {"adapter": ck.adapter, "input_adapter": ck.input_adapter}
    meta = {"model": ck.model, "weights": ck.weights, "cut": ck.cut,
            **{k: a.config() if a is not None else None for k, a in parts.items()},
            "config": ck.config.to_json(), "info": ck.info}
    tensors = {f"{k}.{n}": v for k, a in parts.items() if a is not None
               for n, v in a.state_dict().items()}
    return save_plain(folder, FORMAT, VERSION, meta, tensors, ck.split)


def load_adapter(folder: str | Path) -> AdapterCheckpoint:
    """Read an adapter checkpoint (:class:`CheckpointError` when it is not one)."""
    meta, tensors, split = load_plain(folder, FORMAT, VERSION)
    try:
        parts: dict[str, Adapter | None] = {}
        for key in ("adapter", "input_adapter"):
            if meta.get(key) is None:
                parts[key] = None
                continue
            parts[key] = Adapter(**meta[key])
            parts[key].load_state_dict(prefixed(tensors, key))
            parts[key].eval()
        if parts["adapter"] is None and parts["input_adapter"] is None:
            raise ValueError("no adapter in it")
        return AdapterCheckpoint(meta["model"], meta["weights"], meta["cut"], parts["adapter"],
                                 AdapterConfig(**meta["config"]), split,
                                 dict(meta.get("info") or {}), parts["input_adapter"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: bad adapter checkpoint ({e!r})") from None


@torch.no_grad()
def coded_top1(edge: nn.Module, tail: nn.Module, ds: ImageFolderDataset, codec: codecs.Codec,
               batch_size: int = 250, device: str = "cpu") -> tuple[float, float]:
    """(top-1 in %, mean stream bytes) of ``ds`` through ``edge`` (a head: inputs -> a
    1-tuple), each sample's tensor coded by ``codec`` and decoded, then ``tail``."""
    dev = torch.device(device)
    edge, tail = edge.eval().to(dev), tail.eval().to(dev)
    right = total_bytes = n = 0
    for x, y in ds.batches(batch_size):
        (feat,) = edge(x.to(dev))
        decoded = []
        for f in feat.cpu().split(1):
            data = codec.encode(f)
            total_bytes += len(data)
            decoded.append(codecs.decode(data)[0])
        right += int((tail(torch.cat(decoded).to(dev)).argmax(-1).cpu() == y).sum())
        n += len(y)
    return 100.0 * right / max(n, 1), total_bytes / max(n, 1)
