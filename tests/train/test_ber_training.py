"""BER-aware bottleneck training: latent rows replaced by the channel medians as a concealed
``resilient`` slice decodes; a tiny run trains (the loss falls), the default is off, and the
flag reaches the checkpoint's settings."""

from __future__ import annotations

import json

import pytest
import torch

from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.train import TrainConfig, train_bottleneck
from splitcomp.train.trainer import conceal_rows

from .tiny import random_images, random_resnet20, tiny_checkpoint

CFG = TrainConfig(channels=8, beta=50.0, epochs=12, batch_size=16, lr=5e-3, feature_share=0.0,
                  symbol_error_rate=0.2)


def test_conceal_rows_replaces_whole_rows_by_the_medians() -> None:
    y = torch.randn(64, 4, 6, 5, requires_grad=True)
    med = torch.tensor([1.5, -2.0, 0.25, 3.0])
    out = conceal_rows(y, med, 0.3, torch.Generator().manual_seed(0))
    lost = (out == med.reshape(1, -1, 1, 1)).all(dim=(1, 3))  # (B, H): whole rows
    kept = (out == y).all(dim=(1, 3))
    assert bool((lost | kept).all()) and not bool((lost & kept).any())
    assert 0.2 < float(lost.float().mean()) < 0.4
    out.sum().backward()
    assert bool((y.grad.sum(dim=(1, 3)) == 0)[lost].all())  # nothing flows into lost rows
    flat = conceal_rows(torch.zeros(1000, 4), med, 0.5, torch.Generator().manual_seed(1))
    assert 0.4 < float((flat == med).float().mean()) < 0.6  # no rows: whole channels
    assert torch.equal(conceal_rows(y, med, 0.0, torch.Generator()), y)


def test_rate_is_checked_and_off_by_default() -> None:
    assert TrainConfig().symbol_error_rate == 0.0
    assert TrainConfig().to_json()["symbol_error_rate"] == 0.0
    with pytest.raises(ValueError, match="symbol_error_rate"):
        TrainConfig(symbol_error_rate=1.0)


def test_ber_aware_training_runs_and_the_loss_falls() -> None:
    head, tail = random_resnet20()
    _, hist = train_bottleneck(head, tail, random_images(64), CIFAR_EVAL.normalize, CFG)
    assert hist.steps == 48
    first, last = hist.loss[:2], hist.loss[-2:]
    assert sum(last) / 2 < 0.9 * sum(first) / 2, hist.loss


def test_cli_flag_reaches_the_checkpoint(tmp_path) -> None:
    _, ck = tiny_checkpoint(tmp_path, "--symbol-error-rate", "0.1")
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["config"]["symbol_error_rate"] == 0.1
