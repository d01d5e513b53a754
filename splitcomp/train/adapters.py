"""Client adapters (SALT): a small module on the edge between the frozen head and the codec,
trained on one client's own data while the server's model stays untouched.

    x (the client's shifted inputs) --frozen head--> crossing tensor --adapter--> codec
        --> the server's unchanged tail

The adapter is residual (``f + up(relu(bn(down(f))))``, ``up`` starting at zero), so an
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
    """Crossing tensor (N, K, H, W) -> adapted tensor of the same shape (identity at init)."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.channels, self.hidden = channels, hidden
        self.down = nn.Conv2d(channels, hidden, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.up = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "hidden": self.hidden}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.up(F.relu(self.bn(self.down(features))))


class AdaptedHead(nn.Module):
    """The frozen head followed by a client's adapter; returns a 1-tuple like a cut head, so
    a :class:`~splitcomp.runtime.SplitClient` runs it as its head."""

    def __init__(self, head: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.head, self.adapter = head, adapter

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor]:
        (features,) = self.head(*inputs)
        return (self.adapter(features),)


@dataclass
class AdapterConfig:
    """Settings of one adapter run (recorded in its checkpoint)."""

    shift: str = ""
    hidden: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pad: int = 4
    seed: int = 0
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.enable_grad()
def train_adapter(head: nn.Module, tail: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  normalize: Callable[[torch.Tensor], torch.Tensor], cfg: AdapterConfig,
                  progress: Callable[[dict[str, float]], None] | None = None
                  ) -> tuple[Adapter, History]:
    """Train an adapter after the frozen ``head`` through the frozen ``tail`` on the client's
    ``images`` (N uint8, already shifted) and ``labels``."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    freeze(head.to(device), tail.to(device))
    with torch.no_grad():
        (feat,) = head(normalize(images[:2]).to(device))
    adapter = Adapter(feat.shape[1], cfg.hidden).to(device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = images.shape[0]
    budget = StepBudget(round(cfg.epochs * max(n // cfg.batch_size, 1)) if cfg.epochs
                        else None, cfg.minutes)
    hist, step, batches = History(), 0, Batches(n, cfg.batch_size, g)
    adapter.train()
    while budget.running(step):
        total = budget.update(step)
        idx = batches.next()
        x = normalize(crop_flip(images[idx], cfg.pad, g)).to(device)
        y = labels[idx].to(device)
        with torch.no_grad():
            (feat,) = head(x)
        logits = tail(adapter(feat))
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
    return adapter.eval(), hist


@dataclass
class AdapterCheckpoint:
    """A client's adapter at a cut of a zoo model, and the shift it was trained for."""

    model: str
    weights: str | None
    cut: str
    adapter: Adapter
    config: AdapterConfig
    split: SplitRecord
    info: dict[str, Any] = field(default_factory=dict)

    def edge_model(self, head: nn.Module) -> AdaptedHead:
        return AdaptedHead(head, self.adapter).eval()


def save_adapter(ck: AdapterCheckpoint, folder: str | Path) -> Path:
    meta = {"model": ck.model, "weights": ck.weights, "cut": ck.cut,
            "adapter": ck.adapter.config(), "config": ck.config.to_json(), "info": ck.info}
    tensors = {f"adapter.{k}": v for k, v in ck.adapter.state_dict().items()}
    return save_plain(folder, FORMAT, VERSION, meta, tensors, ck.split)


def load_adapter(folder: str | Path) -> AdapterCheckpoint:
    """Read an adapter checkpoint (:class:`CheckpointError` when it is not one)."""
    meta, tensors, split = load_plain(folder, FORMAT, VERSION)
    try:
        adapter = Adapter(**meta["adapter"])
        adapter.load_state_dict(prefixed(tensors, "adapter"))
        return AdapterCheckpoint(meta["model"], meta["weights"], meta["cut"], adapter.eval(),
                                 AdapterConfig(**meta["config"]), split,
                                 dict(meta.get("info") or {}))
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
