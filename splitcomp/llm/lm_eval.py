"""Language-model quality through a split: perplexity and multiple-choice accuracy, with the
hidden state at the cut uncompressed and through a codec, from one edge pass.

Teacher-forced evaluation runs each half over whole sequences; with per-token bitstreams
(the default) every token's hidden state is coded alone, exactly as a decode step sends it, and
since the edge half is exact, the server sees what it would see in a step-by-step generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import torch
import torch.nn.functional as F

from ..codecs import Codec
from .halves import EdgeHalf, ServerHalf
from .hidden_wire import WireStats, decode_hidden, encode_hidden
from .text import Choice, Tokenizer


@dataclass
class EdgeBatch:
    """Sequences (B, T), their real lengths, and the edge's hidden states (B, T, H) for them."""

    ids: torch.Tensor
    lengths: list[int]
    hidden: torch.Tensor


def edge_pass(edge: EdgeHalf, ids: torch.Tensor, lengths: Sequence[int] | None = None
              ) -> EdgeBatch:
    """Run the edge once over right-padded sequences (padding does not affect real tokens)."""
    lengths = list(lengths) if lengths is not None else [ids.shape[1]] * ids.shape[0]
    return EdgeBatch(ids, lengths, edge.forward_full(ids))


def code_hidden(batch: EdgeBatch, codec: Codec | None, per_token: bool = True,
                stats: WireStats | None = None) -> torch.Tensor:
    """The hidden states as the server receives them: each row's real tokens through the
    codec (per token or per row), every byte counted in ``stats``; padding stays zero. Per
    token, each row is a session's streams: its first full, the rest compact (as
    :class:`~splitcomp.runtime.llm.RemoteLM` sends them)."""
    if codec is None:
        return batch.hidden
    out = torch.zeros_like(batch.hidden)
    for b, n in enumerate(batch.lengths):
        row = batch.hidden[b : b + 1, :n]
        blobs = encode_hidden(codec, row, per_token, set() if per_token else None)
        if stats is not None:
            stats.add(blobs, tokens=n, elements=row.numel())
        out[b : b + 1, :n] = decode_hidden(blobs)
    return out


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every t: (B, T-1), computed in float32."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


@dataclass
class Perplexity:
    """Perplexity over some windows, and the bytes it took to get there."""

    nll: float = 0.0
    tokens: int = 0
    stats: WireStats = field(default_factory=WireStats)
    #: each window's (sequence's) negative log-likelihood and predicted tokens, in order
    window_nll: list[float] = field(default_factory=list)
    window_tokens: list[int] = field(default_factory=list)

    def add(self, lp: torch.Tensor) -> None:
        """Count the token log-probabilities ``lp`` (B, T-1) of a batch, a window a row."""
        rows = lp.sum(dim=1)
        self.window_nll.extend(-float(v) for v in rows)
        self.window_tokens.extend([lp.shape[1]] * lp.shape[0])
        self.nll -= float(rows.sum())
        self.tokens += lp.numel()

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


def perplexity(server: ServerHalf, batches: Sequence[EdgeBatch], codec: Codec | None,
               per_token: bool = True) -> Perplexity:
    """Perplexity of the next token over every window (its first token has no context)."""
    res = Perplexity()
    for batch in batches:
        logits = server.forward_full(code_hidden(batch, codec, per_token, res.stats))
        res.add(token_logprobs(logits, batch.ids))
    return res


@dataclass
class Comparison:
    """Uncompressed vs coded over the same windows. Besides perplexity, the mean KL divergence
    of the coded next-token distributions from the uncompressed ones and their top-1
    agreement: a perplexity change of under ~1 % is within what quantization noise moves
    either way, KL is not fooled by that."""

    base: Perplexity
    coded: Perplexity
    kl: float
    top1_agreement: float


def compare(server: ServerHalf, batches: Sequence[EdgeBatch], codec: Codec,
            per_token: bool = True) -> Comparison:
    """Both passes per window (logits of one window held twice, not of all windows)."""
    base, coded = Perplexity(), Perplexity()
    kl_sum, agree, n = 0.0, 0, 0
    for batch in batches:
        ref = F.log_softmax(server.forward_full(batch.hidden).float(), dim=-1)
        got = F.log_softmax(
            server.forward_full(code_hidden(batch, codec, per_token, coded.stats)).float(), dim=-1)
        for res, logp in ((base, ref), (coded, got)):
            res.add(logp[:, :-1].gather(-1, batch.ids[:, 1:, None]).squeeze(-1))
        kl_sum += float((ref.exp() * (ref - got)).sum())
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        n += ref.shape[0] * ref.shape[1]
    return Comparison(base, coded, kl_sum / n, agree / n)


def increase_pct(ppl: float, baseline: float) -> float:
    return 100.0 * (ppl / baseline - 1.0)


# -- multiple choice (HellaSwag) ------------------------------------------------------------
@dataclass
class ChoiceBatch:
    """One item's four context+ending sequences after the edge, with the ending spans."""

    batch: EdgeBatch
    start: int
    label: int
    ending_chars: list[int]


def choice_batches(edge: EdgeHalf, tokenizer: Tokenizer, items: Sequence[Choice]
                   ) -> list[ChoiceBatch]:
    """Tokenize each item (context, then ``" " + ending``) and run the edge over its endings."""
    out = []
    for item in items:
        ctx = tokenizer.encode(item.context)
        ends = [tokenizer.encode(" " + e) for e in item.endings]
        rows = [ctx + e for e in ends]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        out.append(ChoiceBatch(edge_pass(edge, ids, [len(r) for r in rows]), len(ctx),
                               item.label, [len(" " + e) for e in item.endings]))
    return out


def choice_accuracy(server: ServerHalf, items: Sequence[ChoiceBatch], codec: Codec | None,
                    per_token: bool = True, stats: WireStats | None = None) -> float:
    """Share of items whose right ending has the highest log-likelihood per character (the
    usual length-normalised HellaSwag score, ``acc_norm``)."""
    right = 0
    for item in items:
        b = item.batch
        width = b.ids.shape[1]
        # logits only where they predict an ending token: the LM head dominates the tail
        keep = torch.arange(item.start - 1, width - 1)
        logits = server.forward_full(code_hidden(b, codec, per_token, stats), keep)
        logp = F.log_softmax(logits.float(), dim=-1)
        lp = logp.gather(-1, b.ids[:, item.start :, None]).squeeze(-1)
        scores = [float(lp[i, : n - item.start].sum()) / max(chars, 1)
                  for i, (n, chars) in enumerate(zip(b.lengths, item.ending_chars, strict=True))]
        right += int(max(range(len(scores)), key=scores.__getitem__) == item.label)
    return right / len(items) if items else float("nan")


# -- choosing a codec setting ---------------------------------------------------------------
@dataclass
class Calibration:
    """The quality chosen for a perplexity target, and every setting tried on the way."""

    quality: float
    met: bool
    tried: list[dict[str, Any]]


#: a further test a setting must pass besides perplexity: codec -> (passed, figures to record)
Guard = Callable[[Codec], tuple[bool, dict[str, Any]]]


def increase_bound(base: Perplexity, coded: Perplexity, confidence: float) -> float:
    """The perplexity increase (%) that another text of as many windows as ``base`` / ``coded``
    (the same windows, uncompressed and coded) stays under with probability ``confidence``.

    Normal approximation over windows: the log-perplexity increase ``r = sum d_w / sum n_w``
    (``d_w`` a window's coded minus uncompressed NLL, ``n_w`` its tokens), its standard error
    ``se`` from the windows' spread around it (ratio estimator, ``W / (W - 1)``), and the bound
    ``r + z sqrt(2) se``: another text's ``r`` differs from this one's by twice one's variance.
    Why: texts differ in how much the same setting hurts them, so a setting chosen at the
    limit on one text often lands over it on the next (how often, with and without the bound:
    ``docs/results/llm_chooser.json``). ``confidence`` 0.5 gives the increase itself. Windows
    of one article are alike, so few articles understate the spread."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence}: a probability, 0 < p < 1")
    if coded.window_tokens != base.window_tokens or len(coded.window_nll) != len(base.window_nll):
        raise ValueError("increase_bound: not the same windows")
    d = torch.tensor(coded.window_nll, dtype=torch.float64) - torch.tensor(
        base.window_nll, dtype=torch.float64)
    n = torch.tensor(base.window_tokens, dtype=torch.float64)
    r, z = float(d.sum() / n.sum()), NormalDist().inv_cdf(confidence)
    if z != 0.0:
        w = d.numel()
        if w < 2:
            raise ValueError("a bound above the mean needs at least 2 windows")
        se = math.sqrt(float(((d - r * n) ** 2).sum()) * w / (w - 1)) / float(n.sum())
        r += z * math.sqrt(2.0) * se
    return 100.0 * math.expm1(r)


def choose_quality(server: ServerHalf, calib: Sequence[EdgeBatch],
                   make_codec: Callable[[float], Codec], grid: Sequence[float],
                   target_pct: float, per_token: bool = True, guard: Guard | None = None,
                   confidence: float = 0.9) -> Calibration:
    """The lowest-rate setting of ``grid`` (ordered lowest rate first) such that it and every
    higher-rate setting raise perplexity by at most ``target_pct`` percent on other text with
    probability ``confidence`` (:func:`increase_bound` over the calibration windows ``calib``;
    0.5: on these windows) and pass ``guard`` (e.g. a floor on generation agreement, run only
    where the perplexity target is met): the walk starts at the highest rate and stops at the
    first miss. (Perplexity changes under 1 % are noisy; walking up from the lowest rate could
    pick a lucky setting below a failing one.) If even the highest rate misses, it is returned
    with ``met=False``."""
    if not grid:
        raise ValueError("this codec has no quality grid to search")
    base = perplexity(server, calib, None)
    tried: list[dict[str, Any]] = []
    best, met = len(grid) - 1, False
    for i in range(len(grid) - 1, -1, -1):
        codec = make_codec(grid[i])
        res = perplexity(server, calib, codec, per_token)
        bound = increase_bound(base, res, confidence)
        tried.append({"quality": grid[i], "ppl_increase_pct": increase_pct(res.ppl, base.ppl),
                      "ppl_increase_bound_pct": bound,
                      "bits_per_element": res.stats.bits_per_element})
        if bound > target_pct:
            break
        if guard is not None:
            ok, figures = guard(codec)
            tried[-1].update(figures)
            if not ok:
                break
        best, met = i, True
    return Calibration(grid[best], met, tried)
