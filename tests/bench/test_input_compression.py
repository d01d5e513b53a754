"""Input-compression baseline: exact file bytes, rate falls with quality, shapes survive."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitcomp.bench.input_compression import (
    decode_image,
    encode_image,
    match_accuracy,
    raw_bytes_per_sample,
    sweep_input_codec,
    uncompressed_accuracy,
)
from splitcomp.data import CIFAR_EVAL


def smooth_images(n: int = 12, size: int = 32) -> torch.Tensor:
    """Natural-ish uint8 images: upsampled noise plus a gradient (compressible, not trivial)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + torch.linspace(0, 0.3, size).view(1, 1, 1, -1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def toy_model(n_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, n_classes)).eval()


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_round_trip_shape(fmt: str) -> None:
    img = smooth_images(1, 40)[0][:, :, :24]  # non-square
    out = decode_image(encode_image(img, fmt, 90))
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert (out.int() - img.int()).abs().float().mean() < 8


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_bytes_are_exact_file_lengths_and_fall_with_quality(fmt: str) -> None:
    images, model = smooth_images(), toy_model()
    labels = torch.arange(len(images)) % 4
    rows = sweep_input_codec(model, images, labels, fmt, [10, 50, 95], preprocess=CIFAR_EVAL,
                             batch_size=5)
    assert [r["quality"] for r in rows] == [10, 50, 95]
    for r in rows:
        lengths = [len(encode_image(img, fmt, r["quality"])) for img in images]
        assert r["bytes_per_sample"] == pytest.approx(sum(lengths) / len(lengths))
        assert r["bits_per_element"] == pytest.approx(8 * r["bytes_per_sample"] / (3 * 32 * 32))
        assert r["codec"] == fmt and r["n_images"] == len(images) and 0 <= r["accuracy"] <= 100
    sizes = [r["bytes_per_sample"] for r in rows]
    assert sizes[0] < sizes[1] < sizes[2]


def test_match_accuracy_picks_lowest_rate_within_drop() -> None:
    rows = [
        {"quality": 10, "bytes_per_sample": 100, "accuracy": 80.0},
        {"quality": 50, "bytes_per_sample": 300, "accuracy": 89.6},
        {"quality": 90, "bytes_per_sample": 900, "accuracy": 90.0},
    ]
    assert match_accuracy(rows, 90.0, 0.5)["quality"] == 50
    assert match_accuracy(rows, 90.0, 20)["quality"] == 10
    assert match_accuracy(rows, 95.0, 0.5) is None


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_image(torch.zeros(3, 8, 8), "jpeg", 50)  # float, not uint8
    with pytest.raises(ValueError):
        sweep_input_codec(toy_model(), smooth_images(2), torch.zeros(2, dtype=torch.long), "gif",
                          [50], preprocess=CIFAR_EVAL)


@pytest.mark.requires_shared_data
def test_resnet20_high_quality_keeps_accuracy(single_thread: None) -> None:
    from splitcomp.data import load_dataset
    from splitcomp.zoo import create_model

    model = create_model("resnet20", weights="default")
    ds = load_dataset("cifar10", model.default_cfg.preprocess(), limit=100)
    images = torch.stack([ds.image_uint8(i) for i in range(len(ds))])
    base = uncompressed_accuracy(model, images, ds.labels)
    (row,) = sweep_input_codec(model, images, ds.labels, "webp", [100])
    assert raw_bytes_per_sample(images) == 3072
    assert row["bytes_per_sample"] < 3072 and abs(row["accuracy"] - base) <= 3


def test_png_is_lossless() -> None:
    img = smooth_images(1)[0]
    assert torch.equal(decode_image(encode_image(img, "png")), img)


def test_match_accuracy_monotone_ignores_lucky_low_rate_row() -> None:
    rows = [
        {"quality": 5, "bytes_per_sample": 50, "accuracy": 90.0},  # lucky
        {"quality": 10, "bytes_per_sample": 100, "accuracy": 80.0},
        {"quality": 90, "bytes_per_sample": 900, "accuracy": 90.0},
    ]
    assert match_accuracy(rows, 90.0, 0.5)["quality"] == 5
    assert match_accuracy(rows, 90.0, 0.5, monotone=True)["quality"] == 90


def test_jpeg_of_noise_at_high_quality_does_not_overflow_pillow_buffer() -> None:
    noise = torch.randint(0, 256, (3, 224, 224), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    assert len(encode_image(noise, "jpeg", 90)) > 224 * 224  # more than Pillow's guess
