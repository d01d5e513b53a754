"""Generation quality through a split: the split model's own greedy continuations (codec
applied to every token's hidden state, KV caches on both sides) against the whole model's.

Perplexity is teacher-forced: it scores each next token given the *right* history, so a codec
that derails generation after one wrong token can still look harmless (``rans bits=4`` raised
SmolLM2's perplexity by 0.66 % and answered a chat prompt with nonsense). Here each side
generates from its own tokens, and per prompt we compare the first ``T`` new tokens position
by position (after an end-of-sequence token a sequence is padded with "nothing", which only
matches "nothing"):

* agreement: share of the ``T`` positions where both have the same token;
* first divergence: the first position where they differ (``T`` when none);
* exact match (prompts with short answers): one of the expected answers appears, as a whole
  word, in the continuation's text; for the whole model and for the split one.

The prompts (:data:`PROMPTS_FILE`, written for this project) rotate over kinds (facts,
arithmetic, instructions, code, lists, stories, dialogue), so any prefix covers every kind; the
first :data:`REPORT_PROMPTS` are reported, the last :data:`CALIBRATION_PROMPTS` are for
choosing a codec setting (:func:`report_prompts`, :func:`calibration_prompts`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..codecs import Codec
from .hidden_wire import WireStats
from .pipeline import SplitLM, greedy_unsplit
from .text import Tokenizer

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
REPORT_PROMPTS = 32
CALIBRATION_PROMPTS = 16
#: what a position holds after the sequence ended (no token id is negative)
_ENDED = -1


@dataclass(frozen=True)
class Prompt:
    """One prompt: its kind, its text, whether it is a chat turn, its accepted answers."""

    kind: str
    text: str
    chat: bool = False
    answers: tuple[str, ...] = ()


def load_prompts(path: Path | None = None) -> list[Prompt]:
    """Every prompt of a prompts file (default: the one shipped with the package)."""
    data = json.loads(Path(path or PROMPTS_FILE).read_text(encoding="utf-8"))
    return [Prompt(p["kind"], p["text"], bool(p.get("chat", False)),
                   tuple(p.get("answers", ()))) for p in data["prompts"]]


def report_prompts(count: int = REPORT_PROMPTS) -> list[Prompt]:
    """The first ``count`` prompts (the reported ones)."""
    return load_prompts()[:count]


def calibration_prompts(count: int = CALIBRATION_PROMPTS) -> list[Prompt]:
    """The last ``count`` prompts (for choosing a setting; disjoint from the reported ones
    while the two counts add up to no more than the file holds)."""
    return load_prompts()[-count:] if count > 0 else []


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: a chat turn goes through the tokenizer's chat template when it
    has one (byte-level test tokenizers and base models have none: the text as is)."""
    text = prompt.text
    chat = getattr(tokenizer, "chat_prompt", None) if prompt.chat else None
    if chat is not None:
        try:
            text = chat(text)
        except ValueError:  # transformers: no chat template set
            pass
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"prompt {prompt.text!r} encodes to no tokens")
    return ids


def padded(tokens: Sequence[int], length: int) -> list[int]:
    """The first ``length`` tokens, padded with the end marker after a shorter sequence."""
    return list(tokens[:length]) + [_ENDED] * max(length - len(tokens), 0)


def agreement(ref: Sequence[int], got: Sequence[int], length: int) -> tuple[float, int]:
    """(share of the ``length`` positions equal, first differing position or ``length``)."""
    a, b = padded(ref, length), padded(got, length)
    same = [x == y for x, y in zip(a, b, strict=True)]
    first = same.index(False) if False in same else length
    return sum(same) / length, first


def exact_match(text: str, answers: Sequence[str]) -> bool:
    """One of ``answers`` appears in ``text`` as a whole word (case-insensitive)."""
    low = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", low) for a in answers)


@dataclass
class GenQuality:
    """Generation figures of one codec setting over some prompts."""

    agreement: float
    first_divergence_mean: float
    exact_match: float | None  # None: no prompt with an answer
    exact_match_baseline: float | None
    prompts: int
    tokens: int
    exact_items: int
    by_kind: dict[str, float] = field(default_factory=dict)
    stats: WireStats = field(default_factory=WireStats)

    def as_dict(self) -> dict[str, Any]:
        """The ``eval-lm`` JSON keys."""
        return {"gen_agreement": self.agreement,
                "first_divergence_mean": self.first_divergence_mean,
                "gen_exact_match": self.exact_match,
                "gen_exact_match_baseline": self.exact_match_baseline,
                "gen_prompts": self.prompts, "gen_tokens": self.tokens,
                "gen_exact_items": self.exact_items,
                "gen_agreement_by_kind": self.by_kind,
                "gen_bits_per_element": self.stats.bits_per_element}


class GenEval:
    """Prompts, their whole-model greedy continuations (computed once), and the comparison
    of a split model's continuations through any codec against them."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, split: int,
                 prompts: Sequence[Prompt], max_new_tokens: int = 64) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.model, self.tokenizer, self.split = model, tokenizer, split
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.eos = tokenizer.eos_token_id
        self.ids = [torch.tensor(encode_prompt(tokenizer, p)) for p in self.prompts]
        self._reference: list[list[int]] | None = None

    @property
    def reference(self) -> list[list[int]]:
        """The whole model's greedy continuations (end token included when reached)."""
        if self._reference is None:
            self._reference = [greedy_unsplit(self.model, ids, self.max_new_tokens, self.eos)[0]
                               for ids in self.ids]
        return self._reference

    def generate(self, codec: Codec | str, per_token: bool = True
                 ) -> tuple[list[list[int]], WireStats]:
        """The split model's greedy continuations, every step's hidden states coded."""
        lm = SplitLM(self.model, self.split, codec=codec, per_token=per_token)
        out = []
        for ids in self.ids:
            lm.reset()
            out.append([s.token for s in lm.generate(ids, self.max_new_tokens, self.eos)])
        return out, lm.wire.stats

    def text(self, tokens: Sequence[int]) -> str:
        """A continuation's text (up to its end token)."""
        if self.eos is not None and self.eos in tokens:
            tokens = tokens[: list(tokens).index(self.eos)]
        return self.tokenizer.decode(list(tokens))

    def exact_share(self, continuations: Sequence[Sequence[int]]) -> float | None:
        """Share of the prompts with answers whose continuation contains one (None: none)."""
        hits = [exact_match(self.text(c), p.answers)
                for p, c in zip(self.prompts, continuations, strict=True) if p.answers]
        return sum(hits) / len(hits) if hits else None

    def evaluate(self, codec: Codec | str, per_token: bool = True) -> GenQuality:
        """All figures of one codec setting."""
        return self.compare(*self.generate(codec, per_token))

    def compare(self, got: Sequence[Sequence[int]], stats: WireStats | None = None
                ) -> GenQuality:
        """The figures of continuations ``got`` (one per prompt) against the reference."""
        n = self.max_new_tokens
        pairs = [agreement(r, g, n) for r, g in zip(self.reference, got, strict=True)]
        kinds: dict[str, list[float]] = {}
        for p, (share, _) in zip(self.prompts, pairs, strict=True):
            kinds.setdefault(p.kind, []).append(share)
        count = len(pairs)
        return GenQuality(
            agreement=sum(s for s, _ in pairs) / count if count else float("nan"),
            first_divergence_mean=sum(f for _, f in pairs) / count if count else float("nan"),
            exact_match=self.exact_share(got),
            exact_match_baseline=self.exact_share(self.reference),
            prompts=count, tokens=n, exact_items=sum(1 for p in self.prompts if p.answers),
            by_kind={k: sum(v) / len(v) for k, v in kinds.items()},
            stats=stats if stats is not None else WireStats())
