"""Batch augmentations on uint8 image tensors (N, C, H, W), vectorised, seeded by a generator.

What distillation on a few thousand images needs (Beyer et al. 2022, "Knowledge distillation:
a good teacher is patient and consistent"): many different views of each image, the teacher
run on exactly the view the student sees. Crops and flips here; mixing two images in
:func:`mix`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the zero-padded images (shift up to ``pad`` pixels) and random
    horizontal flips."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
        cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
        idx_n = torch.arange(n)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x).contiguous()


def mix(x: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
        cutmix_prob: float = 0.5) -> torch.Tensor:
    """Mixup or CutMix (chosen per batch) of each image with a shuffled partner, on float
    images; labels are not needed (the teacher labels the mixed view)."""
    n = x.shape[0]
    if n < 2 or alpha <= 0:
        return x
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(n, generator=generator)
    if float(torch.rand(1, generator=generator)) >= cutmix_prob:
        return lam * x + (1 - lam) * x[perm]
    h, w = x.shape[2:]
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out
