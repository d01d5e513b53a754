"""Calibrating a ``tokenwise`` codec context on a split LLM: the edge half's hidden states, and
for Fisher noise shaping the server half's gradients at the cut (labels sampled from the model,
none needed).

    splitcomp lm-context --split 15 --out contexts/
    splitcomp eval-lm --split 15 --codec tokenwise --param level=0 \\
        --codec-context contexts/tokenwise-XXXXX.sctx

Calibration windows come from the *end* of the text, so they never overlap the first windows
that ``eval-lm`` and ``benchmarks/llm_codecs.py`` report on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..codecs.tokenwise import (
    GAIN,
    TokenwiseContext,
    calibrate,
    fit_allocation,
    fit_temporal,
    residual_rows,
)
from .cache import positions_for
from .text import _read_text


def tail_windows(tokenizer, path: Path, window: int, count: int, at_least: int | None = None
                 ) -> torch.Tensor:
    """``count`` non-overlapping ``window``-token windows from the end of a text file; with
    ``at_least``, as many as it holds if that is fewer (but not fewer than ``at_least``)."""
    text = _read_text(path)
    chars = max(8 * window * count, 4096)
    while True:
        ids = tokenizer.encode(text[-chars:])
        if len(ids) > window * count + 1 or chars >= len(text):
            break
        chars *= 2
    ids = ids[1:]  # the first token may be a fragment of a word cut in the middle
    if at_least is not None and len(ids) // window >= at_least:
        count = min(count, len(ids) // window)
    need = window * count
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens, {count} windows of {window} need {need}")
    return torch.tensor(ids[-need:], dtype=torch.long).view(count, window)


def calibrate_edge(edge, windows: torch.Tensor, server=None, shape: bool = True,
                   allocate: bool = True, gain: float = GAIN, temporal: bool = False,
                   temporal_rank: int = 0, **kwargs) -> TokenwiseContext:
    """A context from the edge's hidden states over ``windows`` (count, window), every token
    (each window's first one too: the attention sink gets its share of the scale-code model);
    with the ``server`` half and ``shape``, its encoder shapes the error to the Fisher matrix
    at the cut (:func:`fisher_at_cut`, :mod:`splitcomp.codecs._tokenwise_shaping`) and, with
    ``allocate``, each token's step follows its predicted Fisher trace (step ~
    trace^(-gain/2), :mod:`splitcomp.codecs._tokenwise_alloc`). With ``temporal``, each
    token is coded against a guess from the previous one's decoded state (each window a
    session: :mod:`splitcomp.codecs._tokenwise_temporal`; ``temporal_rank`` principal
    directions of the previous state in its low-rank term), and everything above is fitted
    on the residuals. Other keywords (``predict``, ``trellis``) go to
    :func:`~splitcomp.codecs.tokenwise.calibrate`."""
    states = [edge.forward_full(w[None]) for w in windows]
    sequences = [h[0].float().numpy().astype(np.float32) for h in states]
    guess = fit_temporal(sequences, temporal_rank) if temporal else None
    hidden = residual_rows(guess, sequences) if guess else np.concatenate(sequences)
    traces = None
    if server is not None and (shape or allocate):
        fisher, traces = fisher_and_traces(server, states)
        if shape:
            kwargs["fisher"] = fisher
    ctx = calibrate(hidden, **kwargs)
    ctx.temporal = guess
    if traces is not None and allocate:
        ctx.alloc = fit_allocation(hidden, traces, ctx.token_codes(hidden), gain)
        ctx.clear_tables()
    return ctx


def fisher_at_cut(server, states: list[torch.Tensor], seed: int = 0, skip: int = 2
                  ) -> np.ndarray:
    """The Fisher matrix (H, H) float64 of the server half's next-token distributions with
    respect to the hidden state at the cut: the mean outer product, over positions, of the
    gradient of the log-likelihood of next tokens *sampled from the model's own distribution*
    (so its expectation is the matrix in ``KL ~ 1/2 e^T F e``; no labels needed). Each of
    ``states`` is one window (1, T, H) from position 0; its first ``skip`` positions (the
    attention sink and the token after it, whose massive activations the codec escapes) are
    left out. Seeded: the same states give the same matrix."""
    return fisher_and_traces(server, states, seed, skip)[0]


def fisher_and_traces(server, states: list[torch.Tensor], seed: int = 0, skip: int = 2
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fisher_at_cut`'s matrix and, from the same gradients, the log of each
    position's squared gradient norm (its Fisher trace, one label's estimate), every window's
    positions in order (NaN for the first ``skip`` of each)."""
    total, count, traces = None, 0, []
    for i, h in enumerate(states):
        x = h.detach().to(server.dtype).clone().requires_grad_(True)
        t = x.shape[1]
        with torch.enable_grad():
            logits = server.part(x, positions_for([0], t), server.masks([0], t), None, None)
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            gen = torch.Generator().manual_seed(seed + i)
            y = torch.multinomial(logp.detach().exp(), 1, generator=gen)
            (grad,) = torch.autograd.grad(logp.gather(-1, y).sum(), x)
        g = grad[0, skip:].double()
        total = g.T @ g if total is None else total + g.T @ g
        count += g.shape[0]
        tr = np.full(t, np.nan)
        tr[skip:] = np.log((g**2).sum(-1).numpy() + 1e-30)
        traces.append(tr)
    if total is None or count == 0:
        raise ValueError("fisher_at_cut needs at least one window longer than "
                         f"{skip} tokens")
    return (total / count).numpy(), np.concatenate(traces)
