"""The factorized entropy model: quantization in eval mode, its bit estimate against the real
``bottleneck`` codec, and the frequency tables it hands the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs.bottleneck import register_tables
from splitcomp.train import EntropyBottleneck
from splitcomp.train.ckpt_eval import model_tables

C = 4
SCALE = torch.tensor([0.5, 1.0, 3.0, 8.0]).view(1, C, 1, 1)
SHIFT = torch.tensor([0.0, 2.3, -5.0, 10.0]).view(1, C, 1, 1)


def latents(n: int) -> torch.Tensor:
    """Laplace latents, a different scale and centre per channel."""
    return torch.distributions.Laplace(0.0, 1.0).sample((n, C, 8, 8)) * SCALE + SHIFT


@pytest.fixture(scope="module")
def trained() -> EntropyBottleneck:
    """An entropy model fitted briefly (300 steps, ~2 s) to :func:`latents`."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(C)
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    aux = torch.optim.Adam([eb.quantiles], lr=0.1)
    for _ in range(300):
        y = latents(16)
        _, lik = eb(y, training=True)
        loss = eb.bits(lik) / y.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux.zero_grad()
        eb.aux_loss().backward()
        aux.step()
    return eb.eval()


def test_eval_forward_is_quantize_and_training_adds_bounded_noise() -> None:
    torch.manual_seed(1)
    eb = EntropyBottleneck(3).eval()
    y = torch.randn(2, 3, 5, 5) * 4
    y_hat, lik = eb(y)
    assert torch.equal(y_hat, eb.quantize(y))
    med = eb.medians.view(1, -1, 1, 1)
    assert torch.allclose(y_hat - med, torch.round(y - med), atol=1e-5)
    assert lik.shape == y.shape and bool(((lik > 0) & (lik <= 1)).all())
    noisy, _ = eb(y, training=True)
    assert float((noisy - y).abs().max()) <= 0.5


def test_bits_estimate_matches_the_codec_within_two_percent(trained) -> None:
    torch.manual_seed(2)
    y = latents(64)
    with torch.no_grad():
        y_hat, lik = trained(y)
    estimate = float(EntropyBottleneck.bits(lik))
    tid = register_tables(model_tables(trained))
    codec = codecs.get("bottleneck", tables=tid)
    stream = codec.encode(y)
    header = len(stream) - len(codec.encode_array(y.numpy()))
    assert 0 < header < 64
    coded = 8 * len(stream)
    assert 0.98 * estimate <= coded <= 1.02 * estimate + 8 * header
    (back,) = codecs.decode(stream)
    assert torch.allclose(back, y_hat, atol=1e-5)  # the codec sends what the model quantizes


def test_frequency_tables_shapes(trained) -> None:
    medians, offsets, rows = trained.frequency_tables()
    assert medians.shape == (C,) and medians.dtype == np.float32
    assert offsets.shape == (C,) and offsets.dtype == np.int64 and bool((offsets <= 0).all())
    assert len(rows) == C
    for row in rows:
        assert row.ndim == 1 and row.size >= 1 and int(row.min()) >= 1
        assert int(row.sum()) < 1 << 16
    assert np.allclose(medians, trained.medians.numpy())
    # wider latents get wider rows
    assert rows[3].size > rows[0].size
    assert model_tables(trained).channels == C
