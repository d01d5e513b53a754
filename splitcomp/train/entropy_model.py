"""A factorized entropy model (Balle et al. 2018, "Variational image compression with a scale
hyperprior", appendix 6.1), following CompressAI's ``EntropyBottleneck`` design in plain torch.

Each latent channel ``c`` has its own learned, non-parametric density: a monotone cumulative
function ``F_c`` built from a small per-channel network (filters ``(3, 3, 3)``: four matrices
with softplus weights, tanh gates). The probability of a quantized value ``q`` is
``F_c(q + 1/2) - F_c(q - 1/2)``, so ``-log2`` of it is the bits a coder will spend on ``q``.

* Training (:meth:`forward` with ``training=True``): additive uniform noise in ``[-1/2, 1/2)``
  stands in for rounding, so the rate term is differentiable.
* Coding: ``symbol = round(y - median_c)``, ``y_hat = symbol + median_c`` (the median is
  learned through the quantiles: :meth:`aux_loss`). :meth:`frequency_tables` turns the density
  into integer frequency rows over each channel's likely range, which the ``bottleneck`` codec
  (:mod:`splitcomp.codecs.bottleneck`) entropy-codes with; values outside the range are escaped
  there, so coding is exact for any input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: probability mass left in both tails together by the coding range of a channel
TAIL_MASS = 1e-9
#: smallest likelihood the rate term uses (keeps -log2 finite)
LIKELIHOOD_BOUND = 1e-9


class EntropyBottleneck(nn.Module):
    """Per-channel factorized prior over ``channels`` latent channels (N, C, ...)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3),
                 init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]),
                                                         init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(
            torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / TAIL_MASS - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)

    # -- the density -------------------------------------------------------------------
    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """``x`` (C, 1, N) -> the logit of F_c(x), (C, 1, N)."""
        logits = x
        for i, (m, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            if stop_gradient:
                m, b = m.detach(), b.detach()
            logits = torch.matmul(F.softplus(m), logits) + b
            if i < len(self.factors):
                f = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(f) * torch.tanh(logits)
        return logits

    def _likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """P(round(value) == x) for ``x`` (C, 1, N) on the integer grid around each median."""
        lower = self._logits_cumulative(x - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(x + 0.5, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the stabler tail
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    @property
    def medians(self) -> torch.Tensor:
        """(C,) the learned median of each channel: the quantization offset."""
        return self.quantiles[:, 0, 1].detach()

    def aux_loss(self) -> torch.Tensor:
        """Fits ``quantiles`` to the tail-mass points and the median of each density (the
        density itself is not changed by it: its gradient is stopped). Minimise it alongside
        the main loss, with its own optimiser."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    # -- training and coding -----------------------------------------------------------
    def forward(self, y: torch.Tensor, training: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_hat, likelihoods), both shaped like ``y`` (N, C, ...): noisy ``y`` in training,
        ``y`` rounded around the medians otherwise (what the codec sends)."""
        training = self.training if training is None else training
        if training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_hat = self.quantize(y)
        perm = (1, 0, *range(2, y.dim()))
        values = y_hat.permute(perm).reshape(self.channels, 1, -1)
        lik = self._likelihood(values).reshape(
            y_hat.permute(perm).shape).permute(perm)
        return y_hat, torch.clamp(lik, min=LIKELIHOOD_BOUND)

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        """``round(y - median) + median`` per channel (straight-through in the backward pass)."""
        med = self.medians.reshape(1, -1, *([1] * (y.dim() - 2)))
        return y + (torch.round(y - med) + med - y).detach()

    @staticmethod
    def bits(likelihoods: torch.Tensor) -> torch.Tensor:
        """Total bits the likelihoods cost (a scalar; sum over everything)."""
        return -torch.log2(likelihoods).sum()

    @torch.no_grad()
    def frequency_tables(self, precision: int = 16) -> tuple[np.ndarray, np.ndarray,
                                                            list[np.ndarray]]:
        """What the codec needs: medians (C,) float32, offsets (C,) int64 (the smallest symbol
        ``round(y - median)`` a channel's table covers) and one integer frequency row per
        channel (each >= 1 everywhere, summing to below ``2**precision``) over
        ``[offset, offset + len)``: the density quantised, the two tails' mass left out (the
        codec escapes values outside the row)."""
        med = self.quantiles[:, 0, 1]
        lo = torch.floor(self.quantiles[:, 0, 0] - med).clamp(max=0).long()
        hi = torch.ceil(self.quantiles[:, 0, 2] - med).clamp(min=0).long()
        rows = []
        for c in range(self.channels):
            grid = torch.arange(int(lo[c]), int(hi[c]) + 1, dtype=torch.float32,
                                device=med.device) + med[c]
            pmf = self._single_likelihood(c, grid).double().cpu().numpy()
            total = 1 << precision
            counts = np.maximum(np.floor(pmf * (total - 2 * len(pmf))), 0).astype(np.int64) + 1
            rows.append(counts)
        return med.float().cpu().numpy().copy(), lo.cpu().numpy().astype(np.int64), rows

    def _single_likelihood(self, c: int, x: torch.Tensor) -> torch.Tensor:
        full = x.new_zeros(self.channels, 1, x.numel())
        full[c, 0] = x
        return self._likelihood(full)[c, 0]
