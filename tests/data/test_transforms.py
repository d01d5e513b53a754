"""Preprocessing arithmetic: torchvision-compatible resize/crop, per-channel normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from splitcomp.data import IMAGENET_EVAL, TF_LITE_MEAN, TF_LITE_STD, Preprocess
from splitcomp.data.transforms import center_crop, resize_shorter


def gradient_image(w: int, h: int) -> Image.Image:
    x = np.arange(w * h * 3, dtype=np.uint32).reshape(h, w, 3) % 251
    return Image.fromarray(x.astype(np.uint8))


@pytest.mark.parametrize(("size", "expected"), [((500, 375), (341, 256)),
                                                 ((333, 500), (256, 384)),
                                                 ((256, 300), (256, 300))])
def test_resize_shorter_truncates_like_torchvision(size, expected) -> None:
    assert resize_shorter(gradient_image(*size), 256).size == expected


def test_center_crop_offsets() -> None:
    img = gradient_image(341, 256)
    out = center_crop(img, 224)
    assert out.size == (224, 224)
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    assert np.array_equal(np.asarray(out), np.asarray(img)[top:top + 224, left:left + 224])
    with pytest.raises(ValueError):
        center_crop(gradient_image(100, 300), 224)


def test_imagenet_eval_shape_and_grayscale() -> None:
    gray = gradient_image(500, 333).convert("L")
    u8 = IMAGENET_EVAL.load_uint8(gray)
    assert u8.shape == (3, 224, 224) and u8.dtype == torch.uint8
    assert torch.equal(u8[0], u8[1]) and torch.equal(u8[1], u8[2])
    x = IMAGENET_EVAL(gray)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_normalize_matches_formula() -> None:
    u8 = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    pre = Preprocess()
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    torch.testing.assert_close(pre.normalize(u8), (u8 / 255.0 - mean) / std)


def test_tf_lite_scaling_is_minus_127_over_128() -> None:
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, -1).expand(1, 3, 1, 256)
    out = Preprocess(mean=TF_LITE_MEAN, std=TF_LITE_STD).normalize(u8)
    torch.testing.assert_close(out, (u8.float() - 127) / 128)
